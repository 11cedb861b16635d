import { runHttp } from './scenarios/http.js';
const r = await runHttp({ seconds: Number(process.env.SECONDS ?? 5), transfers: 2, guardEnv: { REINIT_GUARD_MODE: 'off' } });
console.log(JSON.stringify(r, null, 1));

/** Contender: Hono's own proxy() helper on @hono/node-server (fetch-based). */
import { serve } from '@hono/node-server';
import { Hono } from 'hono';
import { proxy } from 'hono/proxy';

const target = process.env.TARGET as string;
const app = new Hono();
app.all('*', (c) => {
  const u = new URL(c.req.url);
  return proxy(`${target}${u.pathname}${u.search}`, { ...c.req, headers: { ...c.req.header(), 'X-Forwarded-For': '127.0.0.1' } });
});
serve({ fetch: app.fetch, port: Number(process.env.PORT), hostname: '127.0.0.1' });

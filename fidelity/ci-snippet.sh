# Draft for .ci/run (to go after `npm run build`; not wired in by the fidelity harness).
#
# The real-coderd differential suite (fidelity/, issue 12). A cold build of both coder
# releases (v2.34.3 and v2.35.1, every package coderd links) takes about 25 minutes of
# CI's two cores on top of module downloads, which would push a cold .ci/run past its
# 45-minute budget. So CI runs it whenever those builds are cached (.cache/go and the
# stamp in .cache/fidelity/bin, written by the last successful build) and says so
# plainly when it skips. Warm, the suite takes about 3 minutes.
if command -v go >/dev/null && go version | grep -q 'go1\.26\.'; then
  npm run test:coderd -- --if-cached
else
  echo "fidelity: SKIPPED: Go 1.26 is not on PATH (the real-coderd suite builds coder with it)"
fi

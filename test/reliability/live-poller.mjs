// The /health/live poller of the hostile probe (hostile-probe.ts forks it): its own process, so
// that the probe building and sending 100-200 MB payloads never delays a poll, and a slow answer
// is the server's stall alone. It polls every RATIO_LIVE_INTERVAL_MS (default 20) ms, one request
// at a time on one kept-alive connection, and timestamps each poll on the epoch clock the probe
// shares (performance.timeOrigin + performance.now()).
//
// IPC: { type: 'target', url } moves it to a restarted server; { type: 'window', id, from, to }
// answers { type: 'window', id, samples, failed, medianMs, maxMs, over100, over200 } for the polls
// sent in [from, to], once the poll in flight at `to` has ended; { type: 'stop' } ends it.
import { Agent, request } from 'node:http';

const INTERVAL_MS = Number(process.env.RATIO_LIVE_INTERVAL_MS ?? 20);
const TIMEOUT_MS = 30_000;
let url = process.argv[2];
let running = true;
const agent = new Agent({ keepAlive: true, maxSockets: 1 });
/** @type {Array<{ at: number; ms: number; ok: boolean }>} */
const samples = [];
/** @type {{ at: number; done: Promise<void> } | undefined} */
let inflight;

const now = () => performance.timeOrigin + performance.now();

function poll() {
  const at = now();
  const done = new Promise((resolve) => {
    let settled = false;
    const end = (ok) => {
      if (settled) return;
      settled = true;
      samples.push({ at, ms: now() - at, ok });
      resolve();
    };
    const req = request(`${url}/health/live`, { agent, timeout: TIMEOUT_MS }, (res) => {
      res.resume();
      res.on('end', () => end(res.statusCode === 200));
      res.on('error', () => end(false));
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', () => end(false));
    req.end();
  });
  inflight = { at, done };
  return done;
}

async function loop() {
  while (running) {
    const started = now();
    await poll();
    const wait = INTERVAL_MS - (now() - started);
    if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
  }
}

async function window(from, to) {
  if (inflight && inflight.at <= to) await inflight.done;
  const inside = samples.filter((s) => s.at >= from && s.at <= to);
  const ms = inside.map((s) => s.ms).sort((a, b) => a - b);
  return {
    samples: inside.length,
    failed: inside.filter((s) => !s.ok).length,
    medianMs: ms.length > 0 ? ms[Math.floor(ms.length / 2)] : 0,
    maxMs: ms.length > 0 ? ms[ms.length - 1] : 0,
    over100: ms.filter((v) => v > 100).length,
    over200: ms.filter((v) => v > 200).length,
  };
}

process.on('message', (message) => {
  if (message.type === 'target') url = message.url;
  else if (message.type === 'window')
    window(message.from, message.to)
      .then((stats) => process.send?.({ type: 'window', id: message.id, ...stats }))
      // The probe is gone: nothing to answer.
      .catch(() => {});
  else if (message.type === 'stop') {
    running = false;
    agent.destroy();
    process.disconnect();
  }
});
process.on('disconnect', () => {
  running = false;
  agent.destroy();
});
void loop();
process.send?.({ type: 'ready' });

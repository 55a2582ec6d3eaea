// Test-only preload for `ratio serve` in the reliability suite: `node --expose-gc --require this`.
// --require also runs in worker threads (the compute workers hold their own tfjs engines), so every
// thread joins one BroadcastChannel. On SIGUSR2 the main thread asks all threads to collect garbage
// and report their live tfjs tensors and heap, then prints one JSON line on stdout:
// {"msg":"gc-probe","id":N,"threads":[{"thread":0,"tensors":..,"bytes":..,"heapUsed":..},...]}.
// Forced GC between load phases tells a leak from garbage not yet collected.
const { BroadcastChannel, isMainThread, threadId } = require('node:worker_threads');

const channel = new BroadcastChannel('ratio-gc-probe');
channel.unref();

function snapshot() {
  globalThis.gc?.();
  // tfjs-core keeps its engine on the global object; absent until the thread loads tfjs.
  const memory = globalThis._tfengine?.memory();
  return {
    thread: threadId,
    tensors: memory ? memory.numTensors : null,
    bytes: memory ? memory.numBytes : null,
    heapUsed: process.memoryUsage().heapUsed,
  };
}

if (isMainThread) {
  let nextId = 0;
  const pending = new Map();
  channel.onmessage = ({ data }) => {
    if (data?.type === 'report') pending.get(data.id)?.push(data.snapshot);
  };
  process.on('SIGUSR2', () => {
    const id = ++nextId;
    const threads = [];
    pending.set(id, threads);
    channel.postMessage({ type: 'gc', id });
    // Workers answer between their tasks; a busy one answers late and is left out of this report.
    const timer = setTimeout(() => {
      pending.delete(id);
      threads.push(snapshot());
      threads.sort((a, b) => a.thread - b.thread);
      process.stdout.write(`${JSON.stringify({ msg: 'gc-probe', id, threads })}\n`);
    }, 1000);
    timer.unref();
  });
} else {
  channel.onmessage = ({ data }) => {
    if (data?.type === 'gc') channel.postMessage({ type: 'report', id: data.id, snapshot: snapshot() });
  };
}

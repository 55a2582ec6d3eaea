import { useEffect, useRef, useState } from 'preact/hooks';
import { errorText } from './api.js';

/**
 * One request of a view as state: idle, running since a time, done with its value and seconds, or
 * failed with a message. Starting again aborts the previous run; so does leaving the view.
 */

export type Task<T> =
  | { status: 'idle' }
  | { status: 'running'; started: number }
  | { status: 'done'; value: T; seconds: number }
  | { status: 'error'; message: string };

export function useTask<T>(): [Task<T>, (work: (signal: AbortSignal) => Promise<T>) => void, () => void] {
  const [task, setTask] = useState<Task<T>>({ status: 'idle' });
  const controller = useRef<AbortController | undefined>(undefined);
  const stop = () => {
    controller.current?.abort();
    controller.current = undefined;
  };
  useEffect(() => stop, []);
  const run = (work: (signal: AbortSignal) => Promise<T>) => {
    stop();
    const own = new AbortController();
    controller.current = own;
    const started = performance.now();
    setTask({ status: 'running', started });
    work(own.signal).then(
      (value) => {
        if (!own.signal.aborted)
          setTask({ status: 'done', value, seconds: (performance.now() - started) / 1000 });
      },
      (error: unknown) => {
        if (!own.signal.aborted) setTask({ status: 'error', message: errorText(error) });
      },
    );
  };
  const reset = () => {
    stop();
    setTask({ status: 'idle' });
  };
  return [task, run, reset];
}

/** Seconds since `started` (performance.now() time), updated every second while mounted. */
export function useElapsed(started: number): number {
  const [now, setNow] = useState(performance.now());
  useEffect(() => {
    const timer = setInterval(() => setNow(performance.now()), 1000);
    return () => clearInterval(timer);
  }, []);
  return Math.max(0, (now - started) / 1000);
}

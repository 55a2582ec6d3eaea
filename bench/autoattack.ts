/**
 * AutoAttack cost on `smallCnn` (untrained, CIFAR-sized input): seconds per 100 points for each
 * attack at its full budget (eps is tiny so no point is broken early), next to the baseline measured
 * in the same run: raw forward+backward (input-gradient) passes per second at the same batch size.
 * `overhead` = attack time / (its gradient evaluations at the raw rate): the attack's own bookkeeping.
 *
 *   npm run bench:autoattack -- [--json] [--n 8] [--iterations 100] [--norm L2] [--attacks apgd-ce,apgd-t]
 *
 * With --peer: a whole audit of a real model against the reference AutoAttack (bench/autoattack-peer.ts).
 */
import * as tf from '@tensorflow/tfjs';
import { apgdAttack, apgdTargeted } from '../src/engine/attacks/apgd.js';
import { fabTargeted } from '../src/engine/attacks/fab.js';
import { square } from '../src/engine/attacks/square.js';
import type { Attack } from '../src/engine/attacks/types.js';
import { initBackend } from '../src/engine/backend/backend.js';
import { functionClassifier } from '../src/engine/model/classifier.js';
import type { Norm } from '../src/engine/types.js';
import { smallCnn } from '../src/training/architectures.js';
import { Rng } from '../src/util/random.js';

if (process.argv.includes('--peer')) await import('./autoattack-peer.js');
else await attackCosts();

function option(name: string, fallback: string): string {
  const at = process.argv.indexOf(`--${name}`);
  return at >= 0 && process.argv[at + 1] !== undefined ? process.argv[at + 1] : fallback;
}

async function attackCosts(): Promise<void> {
  const json = process.argv.includes('--json');
  const n = Number(option('n', '8'));
  const iterations = Number(option('iterations', '100'));
  const norm = option('norm', 'L2') as Norm;
  const targets = Number(option('targets', '9'));
  const only = option('attacks', 'apgd-ce,apgd-dlr,apgd-t,fab-t,square').split(',');
  // Small enough that an untrained network is never flipped: every attack spends its full budget.
  const eps = norm === 'L2' ? 1e-4 : 1e-6;

  const backend = await initBackend();
  const numClasses = 10;
  const network = smallCnn({ numClasses, inputShape: [32, 32, 3] });
  const classifier = functionClassifier(
    { inputShape: [32, 32, 3], numClasses, name: 'smallCnn' },
    (x) => network.apply(x, { training: false }) as tf.Tensor2D,
  );
  const rng = new Rng(0);
  const x = tf.tensor4d(
    Float32Array.from({ length: n * 32 * 32 * 3 }, () => rng.next()),
    [n, 32, 32, 3],
  );
  const predicted = tf.tidy(() => classifier.logits(x).argMax(1).dataSync() as Int32Array);

  /** Raw input-gradient rate: the floor any gradient attack is measured against. */
  function gradientPassesPerSecond(repeats: number): number {
    const labels = tf.tensor1d(predicted, 'int32');
    const step = () =>
      tf.tidy(() =>
        tf
          .grad((input: tf.Tensor) =>
            tf.losses.softmaxCrossEntropy(
              tf.oneHot(labels, numClasses),
              classifier.logits(input as tf.Tensor4D),
            ),
          )(x)
          .dataSync(),
      );
    step();
    const started = performance.now();
    for (let r = 0; r < repeats; r++) step();
    labels.dispose();
    return (repeats * n) / ((performance.now() - started) / 1000);
  }

  const passesPerSecond = gradientPassesPerSecond(5);
  const attacks: { attack: Attack; gradients: number }[] = [
    { attack: apgdAttack('ce', { iterations }), gradients: iterations + 1 },
    { attack: apgdAttack('dlr', { iterations }), gradients: iterations + 1 },
    { attack: apgdTargeted({ iterations, targetClasses: targets }), gradients: targets * (iterations + 1) },
    // FAB needs the Jacobian rows of two classes per step; Square only forward passes (counted as 1/3).
    { attack: fabTargeted({ iterations, nTargets: targets }), gradients: targets * iterations * 2 },
    { attack: square({ queries: iterations * 50 }), gradients: Math.ceil((iterations * 50) / 3) },
  ];
  const results = [];
  for (const { attack, gradients } of attacks.filter((a) => only.includes(a.attack.name))) {
    const started = performance.now();
    const result = await attack.perturb(classifier, x, predicted, { norm, eps, seed: 0 });
    const seconds = (performance.now() - started) / 1000;
    const broken = result.success.reduce((a, b) => a + b, 0);
    result.adversarial.dispose();
    const rawSeconds = (gradients * n) / passesPerSecond;
    results.push({
      name: attack.name,
      seconds,
      seconds_per_100_points: (seconds * 100) / n,
      gradient_evaluations_per_point: gradients,
      raw_gradient_seconds: rawSeconds,
      overhead: seconds / rawSeconds,
      broken,
    });
  }

  const report = {
    benchmark: 'autoattack',
    backend: backend.name,
    model: 'smallCnn (untrained), 32x32x3, 10 classes',
    n,
    batch: n,
    norm,
    eps,
    iterations,
    forward_backward_passes_per_second: passesPerSecond,
    attacks: results,
  };
  tf.dispose([x]);
  network.dispose();
  if (json) console.log(JSON.stringify(report));
  else {
    console.log(
      `backend ${report.backend}; ${passesPerSecond.toFixed(1)} forward+backward passes/s (batch ${n})`,
    );
    for (const r of results) {
      console.log(
        `${r.name.padEnd(9)} ${r.seconds_per_100_points.toFixed(1)} s / 100 points ` +
          `(${r.gradient_evaluations_per_point} gradients/point, overhead x${r.overhead.toFixed(2)})`,
      );
    }
  }
}

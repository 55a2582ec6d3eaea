import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { ConfigError, flagName, resolveConfig } from '../../src/training/config.js';
import { WeightEma } from '../../src/training/ema.js';
import { Sgd } from '../../src/training/optimizer.js';
import { learningRateAt } from '../../src/training/schedule.js';
import { linearModel } from '../helpers/training.js';

describe('Sgd', () => {
  it('applies PyTorch SGD with Nesterov momentum and weight decay, step by step', () => {
    const model = linearModel(1, 1, [2], [0]);
    const [kernel] = model.trainableWeights;
    const sgd = new Sgd([kernel], { momentum: 0.9, nesterov: true, weightDecay: 0.1 });
    const before = tf.memory().numTensors;
    // Hand computation: g = grad + 0.1 w; b = 0.9 b + g (b = g at the first step); w -= lr (g + 0.9 b).
    let w = 2;
    let buffer = 0;
    for (const [grad, lr] of [
      [1, 0.5],
      [-2, 0.1],
      [0.5, 0.2],
    ]) {
      const g = grad + 0.1 * w;
      buffer = buffer === 0 ? g : 0.9 * buffer + g;
      w -= lr * (g + 0.9 * buffer);
      const gradient = tf.tensor2d([[grad]]);
      sgd.step({ [kernel.name]: gradient }, lr);
      gradient.dispose();
      expect(kernel.read().dataSync()[0]).toBeCloseTo(w, 5);
    }
    // One momentum buffer was allocated, nothing else.
    expect(tf.memory().numTensors).toBe(before + 1);
    const state = sgd.state();
    expect(state[0]?.[0]).toBeCloseTo(buffer, 5);
    sgd.setState([Float32Array.from([0.25])]);
    expect(sgd.state()[0]?.[0]).toBe(0.25);
    expect(() => sgd.setState([Float32Array.from([1, 2])])).toThrow(/has 2 values/);
    sgd.dispose();
    model.dispose();
  });

  it('plain momentum (no Nesterov) steps by the buffer', () => {
    const model = linearModel(1, 1, [1], [0]);
    const [kernel] = model.trainableWeights;
    const sgd = new Sgd([kernel], { momentum: 0.5, nesterov: false, weightDecay: 0 });
    for (let i = 0; i < 2; i++) {
      const gradient = tf.tensor2d([[1]]);
      sgd.step({ [kernel.name]: gradient }, 1);
      gradient.dispose();
    }
    // w = 1 - 1 - (0.5 + 1) = -1.5
    expect(kernel.read().dataSync()[0]).toBeCloseTo(-1.5, 6);
    sgd.dispose();
    model.dispose();
  });
});

describe('learningRateAt', () => {
  const base = { lr: 0.1, warmupSteps: 10, totalSteps: 110, milestones: [50, 80], gamma: 0.1 };
  it('warms up linearly, then follows cosine to zero', () => {
    const settings = { ...base, schedule: 'cosine' as const };
    expect(learningRateAt(0, settings)).toBeCloseTo(0.01, 10);
    expect(learningRateAt(9, settings)).toBeCloseTo(0.1, 10);
    expect(learningRateAt(10, settings)).toBeCloseTo(0.1, 10);
    expect(learningRateAt(60, settings)).toBeCloseTo(0.05, 10);
    expect(learningRateAt(110, settings)).toBeCloseTo(0, 10);
  });
  it('steps down by gamma at each milestone', () => {
    const settings = { ...base, schedule: 'step' as const };
    expect(learningRateAt(49, settings)).toBeCloseTo(0.1, 10);
    expect(learningRateAt(50, settings)).toBeCloseTo(0.01, 10);
    expect(learningRateAt(80, settings)).toBeCloseTo(0.001, 10);
  });
});

describe('WeightEma', () => {
  it('averages weights and swaps them in and out exactly', () => {
    const model = linearModel(1, 1, [0], [0]);
    const ema = new WeightEma(model, 0.5);
    const [kernel] = model.trainableWeights;
    const set = (v: number) => {
      const t = tf.tensor2d([[v]]);
      kernel.write(t);
      t.dispose();
    };
    set(4);
    ema.update(); // 0.5 * 0 + 0.5 * 4 = 2
    set(8);
    ema.update(); // 0.5 * 2 + 0.5 * 8 = 5
    expect(ema.state()[0][0]).toBeCloseTo(5, 6);
    ema.swapInto();
    expect(kernel.read().dataSync()[0]).toBeCloseTo(5, 6);
    ema.swapInto();
    expect(kernel.read().dataSync()[0]).toBe(8);
    // With a step count the decay warms up: step 0 gives min(0.5, 1/10) = 0.1.
    ema.update(0); // 0.1 * 5 + 0.9 * 8 = 7.7
    expect(ema.state()[0][0]).toBeCloseTo(7.7, 5);
    ema.dispose();
    model.dispose();
  });
});

describe('resolveConfig', () => {
  it('layers defaults, file and flags; coerces flag strings', () => {
    const config = resolveConfig(
      { objective: 'at', epochs: 3 },
      { epochs: '5', nesterov: 'false', stepMilestones: '2,4' },
    );
    expect(config).toMatchObject({ objective: 'at', epochs: 5, nesterov: false, stepMilestones: [2, 4] });
  });
  it('refuses unknown keys, bad values and a missing out-distribution, naming the setting', () => {
    expect(() => resolveConfig({ epoch: 3 })).toThrow(/unknown setting 'epoch'/);
    expect(() => resolveConfig({ objective: 'pgd' })).toThrow(
      /'objective' must be one of plain, oe, at, acet, ratio/,
    );
    expect(() => resolveConfig({ batchSize: '12.5' })).toThrow(/'batchSize' must be an integer/);
    expect(() => resolveConfig({ ema: 1 })).toThrow(/'ema' must be in \[0, 1\)/);
    expect(() => resolveConfig({ objective: 'ratio' })).toThrow(ConfigError);
    expect(() => resolveConfig({ objective: 'ratio' })).toThrow(/'outData' is required/);
  });
  it('maps settings to kebab-case flags', () => {
    expect(flagName('stepSizeIn')).toBe('step-size-in');
    expect(flagName('epochs')).toBe('epochs');
  });
});

import { describe, expect, it } from 'vitest';
import {
  BenchOptionError,
  maxRelativeDifference,
  median,
  parseOnnxBenchArgs,
  significant,
  timeRatio,
} from '../../bench/onnx-options.js';

describe('bench:onnx options', () => {
  it('runs the smallCnn comparison without a model, batch 64 by default', () => {
    expect(parseOnnxBenchArgs([])).toEqual({ mode: 'small-cnn', batch: 64, repeats: 7 });
    expect(parseOnnxBenchArgs(['--batch', '16', '--repeats', '3'])).toEqual({
      mode: 'small-cnn',
      batch: 16,
      repeats: 3,
    });
  });

  it('compares with PyTorch at batch 8 for a torchvision name, the size left to the model', () => {
    expect(parseOnnxBenchArgs(['--torchvision', 'resnet50'])).toEqual({
      mode: 'torch',
      torchvision: 'resnet50',
      batch: 8,
      classes: 1000,
      seed: 0,
      repeats: 7,
    });
    expect(
      parseOnnxBenchArgs([
        ...['--torchvision', 'resnet18', '--model', 'out/model.onnx', '--size', '64'],
        ...['--batch', '2', '--classes', '10', '--seed', '3', '--repeats', '2'],
      ]),
    ).toEqual({
      mode: 'torch',
      torchvision: 'resnet18',
      model: 'out/model.onnx',
      size: 64,
      batch: 2,
      classes: 10,
      seed: 3,
      repeats: 2,
    });
  });

  it('takes a TorchScript file as PyTorch model beside the ONNX file', () => {
    expect(parseOnnxBenchArgs(['--model', 'm.onnx', '--torchscript', 'm.pt', '--size', '32'])).toEqual({
      mode: 'torch',
      torchscript: 'm.pt',
      model: 'm.onnx',
      size: 32,
      batch: 8,
      classes: 1000,
      seed: 0,
      repeats: 7,
    });
  });

  it.each([
    [['--model', 'm.onnx'], /needs PyTorch's same model/],
    [['--torchvision', 'resnet50', '--torchscript', 'm.pt', '--model', 'm.onnx'], /give one/],
    [['--torchscript', 'm.pt'], /needs '--model FILE.onnx'/],
    [['--model', 'm.onnx', '--torchscript', 'm.pt', '--classes', '10'], /--classes' applies/],
    [['--torchvision', 'ResNet50'], /torchvision model name/],
    [['--torchvision', 'resnet50;rm'], /torchvision model name/],
    [['--torchvision', 'resnet50', '--batch', '0'], /'--batch' must be an integer of at least 1, got '0'/],
    [['--torchvision', 'resnet50', '--size', '2.5'], /'--size' must be an integer/],
    [['--torchvision', 'resnet50', '--repeats', '1e3'], /'--repeats' must be an integer/],
    [['--torchvision', 'resnet50', '--seed=-1'], /'--seed' must be an integer of at least 0/],
    [['--torchvision', 'resnet50', '--classes', '1'], /'--classes' must be an integer of at least 2/],
    [['--size', '64'], /'--size' applies with --torchvision or --torchscript only/],
    [['--torchvision', 'resnet50', '--width', '2'], /Unknown option '--width'/],
    [['resnet50'], /positional/],
  ])('refuses %j', (argv, message) => {
    expect(() => parseOnnxBenchArgs(argv)).toThrow(BenchOptionError);
    expect(() => parseOnnxBenchArgs(argv)).toThrow(message);
  });
});

describe('bench:onnx arithmetic', () => {
  it('takes the middle value, or the mean of the two middle ones', () => {
    expect(median([5, 1, 3])).toBe(3);
    expect(median([4, 1, 3, 10])).toBe(3.5);
    expect(median([2])).toBe(2);
    expect(() => median([])).toThrow(RangeError);
  });

  it('gives ours over theirs to three decimals', () => {
    expect(timeRatio(50, 40)).toBe(1.25);
    expect(timeRatio(1, 3)).toBe(0.333);
    expect(() => timeRatio(1, 0)).toThrow(RangeError);
    expect(() => timeRatio(Number.NaN, 1)).toThrow(RangeError);
  });

  it('measures each item against its own largest reference value', () => {
    // Item 0: max |diff| 0.5 over max |ref| 4; item 1: 0.125 over 0.5 (its scale, not item 0's).
    const reference = [4, -2, 1, 0.5, -0.25, 0];
    const ours = [4.5, -2, 1, 0.5, -0.375, 0.125];
    expect(maxRelativeDifference(ours, reference, 2)).toEqual([0.125, 0.25]);
    expect(maxRelativeDifference(reference, reference, 3)).toEqual([0, 0, 0]);
  });

  it('never reports a match for NaN or against a zero reference', () => {
    expect(maxRelativeDifference([1, Number.NaN], [1, 2], 1)).toEqual([Number.NaN]);
    expect(maxRelativeDifference([0, 1e-9], [0, 0], 1)).toEqual([Number.POSITIVE_INFINITY]);
    expect(maxRelativeDifference([0, 0], [0, 0], 1)).toEqual([0]);
  });

  it('refuses arrays that do not pair up', () => {
    expect(() => maxRelativeDifference([1, 2], [1, 2, 3], 1)).toThrow(RangeError);
    expect(() => maxRelativeDifference([1, 2, 3], [1, 2, 3], 2)).toThrow(RangeError);
  });

  it('rounds to two significant digits', () => {
    expect(significant(0.000012345)).toBe(0.000012);
    expect(significant(1.26)).toBe(1.3);
  });
});

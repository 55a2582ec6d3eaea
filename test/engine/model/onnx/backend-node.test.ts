import { existsSync, readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import * as tf from '@tensorflow/tfjs';
import onnxProto from 'onnx-proto';
import { describe, expect, it } from 'vitest';
import { ONNX_OPS, OnnxGraph, OnnxImportError } from '../../../../src/engine/model/onnx/index.js';
import { decodeTensor } from '../../../../src/engine/model/onnx/proto.js';

/**
 * ONNX's own backend test cases (Debian package libonnx-testdata: data/node/* and
 * data/pytorch-converted/*, each a model.onnx with input and expected-output protobufs). Every case
 * whose ops are all on the allow-list runs; a case is skipped only when the importer refuses it
 * (an attribute value or shape it does not support), and the skips are listed with their reasons.
 * The first graph input is the run-time input (dimension 0 the batch); the others are fed as
 * initializers, since the importer takes weights as constants.
 */
const ROOT = process.env.ONNX_TESTDATA_DIR ?? '/usr/share/libonnx-testdata/data';
const { onnx } = onnxProto;

const LIFTABLE = new Set(['Add', 'Sub', 'Mul', 'Div', 'Pow', 'Max', 'Min', 'Concat']);

interface CaseResult {
  name: string;
  ops: string[];
  status: 'passed' | 'skipped' | 'failed';
  reason?: string;
}

function readTensor(file: string): onnxProto.onnx.TensorProto {
  return onnx.TensorProto.decode(readFileSync(file));
}

function runCase(dir: string, name: string): CaseResult[] {
  const model = onnx.ModelProto.decode(readFileSync(path.join(dir, 'model.onnx')));
  const graph = model.graph as onnxProto.onnx.GraphProto;
  const ops = [...new Set(graph.node.map((n) => n.opType ?? ''))];
  const initialized = new Set(graph.initializer.map((t) => t.name));
  const graphInputs = graph.input.filter((i) => !initialized.has(i.name));
  // Two data inputs of an elementwise op or Concat: both gain a leading batch axis of 1 (the second
  // becomes a constant that does not vary along the batch), and Concat's axis moves by one.
  const lift = graphInputs.length > 1 && graph.node.length === 1 && LIFTABLE.has(ops[0]);
  if (lift) {
    const axis = (graph.node[0].attribute ?? []).find((a) => a.name === 'axis');
    if (axis?.i !== undefined && axis.i !== null && Number(axis.i) >= 0) axis.i = Number(axis.i) + 1;
    graphInputs[0].type?.tensorType?.shape?.dim?.unshift({ dimValue: 1 });
  }
  const foldOnly = graph.node.every((n) => ONNX_OPS[n.opType ?? '']?.foldOnly && n.opType !== 'Shape');
  const sets = readdirSync(dir).filter((d) => d.startsWith('test_data_set_'));
  return sets.map((set): CaseResult => {
    const label = sets.length > 1 ? `${name}/${set}` : name;
    const inputs = graphInputs.map((info, k) => ({
      info,
      tensor: readTensor(path.join(dir, set, `input_${k}.pb`)),
    }));
    if (lift) for (const { tensor } of inputs) tensor.dims = [1, ...tensor.dims];
    const mismatch = inputs.find(({ info, tensor }) => info.type?.tensorType?.elemType !== tensor.dataType);
    if (mismatch) {
      const declared = mismatch.info.type?.tensorType?.elemType;
      return {
        name: label,
        ops,
        status: 'skipped',
        reason: `test data stores '${mismatch.info.name}' as type ${mismatch.tensor.dataType}, the graph declares ${declared}`,
      };
    }
    const runtime = foldOnly ? [] : inputs.slice(0, 1);
    const constants = foldOnly ? inputs : inputs.slice(1);
    const rewritten = onnx.ModelProto.create({
      ...model,
      graph: {
        ...graph,
        input: [...runtime.map((i) => i.info), ...graph.input.filter((i) => initialized.has(i.name))],
        initializer: [...graph.initializer, ...constants.map((c) => ({ ...c.tensor, name: c.info.name }))],
      },
    });
    const bytes = onnx.ModelProto.encode(rewritten).finish();
    const before = tf.memory().numTensors;
    let loaded: OnnxGraph;
    try {
      loaded = OnnxGraph.load(bytes);
    } catch (error) {
      if (error instanceof OnnxImportError)
        return { name: label, ops, status: 'skipped', reason: `${error.name}: ${error.message}` };
      return { name: label, ops, status: 'failed', reason: `load: ${(error as Error).stack}` };
    }
    try {
      const expectedProto = readTensor(path.join(dir, set, 'output_0.pb'));
      if (lift) expectedProto.dims = [1, ...expectedProto.dims];
      const expected = decodeTensor(expectedProto, 'output_0');
      const x = runtime[0] ? decodeTensor(runtime[0].tensor, 'input_0') : undefined;
      const xTensor = x ? tf.tensor(x.values as Float32Array, x.shape, 'float32') : undefined;
      const y = loaded.run(xTensor);
      const actual = y.dataSync();
      const shape = y.shape;
      tf.dispose([y, xTensor]);
      loaded.dispose();
      if (tf.memory().numTensors !== before)
        return { name: label, ops, status: 'failed', reason: 'leaked tensors' };
      if (JSON.stringify(shape) !== JSON.stringify(expected.shape)) {
        return {
          name: label,
          ops,
          status: 'failed',
          reason: `shape [${shape}], expected [${expected.shape}]`,
        };
      }
      for (let i = 0; i < actual.length; i++) {
        const want = expected.values[i];
        const bothNaN = Number.isNaN(actual[i]) && Number.isNaN(want);
        if (!bothNaN && !(Math.abs(actual[i] - want) <= 1e-4 + 1e-3 * Math.abs(want))) {
          return {
            name: label,
            ops,
            status: 'failed',
            reason: `element ${i}: ${actual[i]}, expected ${want}`,
          };
        }
      }
      return { name: label, ops, status: 'passed' };
    } catch (error) {
      loaded.dispose();
      return { name: label, ops, status: 'failed', reason: `run: ${(error as Error).message}` };
    }
  });
}

function casesUnder(folder: string): Array<{ dir: string; name: string }> {
  const base = path.join(ROOT, folder);
  return readdirSync(base)
    .sort()
    .map((name) => ({ dir: path.join(base, name), name: `${folder}/${name}` }))
    .filter(({ dir }) => existsSync(path.join(dir, 'model.onnx')));
}

function allowListed(dir: string): boolean {
  const model = onnx.ModelProto.decode(readFileSync(path.join(dir, 'model.onnx')));
  return (model.graph?.node ?? []).every((n) => Object.hasOwn(ONNX_OPS, n.opType ?? ''));
}

describe('ONNX backend test data (libonnx-testdata)', () => {
  it('passes every allow-listed case the importer accepts, and each op passes at least one', () => {
    if (!existsSync(path.join(ROOT, 'node'))) {
      throw new Error(
        `ONNX backend test data not found at ${ROOT}: install Debian's libonnx-testdata (apt-get install -y --no-install-recommends libonnx-testdata; .ci/run does) or set ONNX_TESTDATA_DIR`,
      );
    }
    const cases = [
      ...casesUnder('node'),
      ...casesUnder('pytorch-converted'),
      ...casesUnder('pytorch-operator'),
    ].filter(({ dir }) => allowListed(dir));
    const results = cases.flatMap(({ dir, name }) => runCase(dir, name));
    const passed = results.filter((r) => r.status === 'passed');
    const skipped = results.filter((r) => r.status === 'skipped');
    const failed = results.filter((r) => r.status === 'failed');
    console.log(
      `ONNX backend cases: ${passed.length} passed, ${skipped.length} skipped, ${failed.length} failed\n` +
        skipped.map((r) => `  skipped ${r.name}: ${r.reason}`).join('\n'),
    );
    expect(failed.map((r) => `${r.name}: ${r.reason}`)).toEqual([]);
    const opsPassing = new Set(passed.flatMap((r) => r.ops));
    // Cases whose data is not float32 (Einsum's are float64) say nothing about an op.
    const floatCases = results.filter(
      (r) => !(r.reason?.includes('is not float') || r.reason?.includes('test data stores')),
    );
    const opsWithCases = new Set(floatCases.flatMap((r) => r.ops));
    expect([...opsWithCases].filter((op) => !opsPassing.has(op)).sort()).toEqual([]);
    expect(passed.length).toBeGreaterThan(50);
  });
});

import sharp from 'sharp';
import { describe, expect, it } from 'vitest';
import {
  escapeXml,
  type PixelImage,
  renderCounterfactualGrid,
  renderCurveChartSvg,
} from '../../src/data/figures.js';

function solid(rgb: [number, number, number], size = 8): PixelImage {
  const data = new Float32Array(size * size * 3);
  for (let p = 0; p < size * size; p++) data.set(rgb, p * 3);
  return { data, height: size, width: size, channels: 3 };
}

describe('renderCounterfactualGrid', () => {
  it('draws one row per image and one column per radius, with the pixels where they belong', async () => {
    const rows = [0, 1].map((r) => ({
      label: [`row ${r}`, 'cat -> dog'],
      original: solid(r === 0 ? [1, 0, 0] : [0, 0, 1]),
      cells: [0.5, 1, 1.5].map((eps) => ({
        image: solid([0, 1, 0]),
        caption: [`p_t ${eps.toFixed(2)}`, 'p_o 0.10'],
      })),
    }));
    const png = await renderCounterfactualGrid(rows, {
      columnTitles: ['eps 0.5', 'eps 1', 'eps 1.5'],
      scale: 4,
    });
    const { data, info } = await sharp(png).raw().toBuffer({ resolveWithObject: true });
    expect(info.channels).toBe(3);
    // 4 columns of max(32, 84) px plus 6 px padding; header 22, rows of 32 + 30 + 6.
    expect(info.width).toBe(6 + 4 * 90);
    expect(info.height).toBe(22 + 2 * 68 + 6);
    const pixel = (x: number, y: number) =>
      Array.from(data.subarray((y * info.width + x) * 3, (y * info.width + x) * 3 + 3));
    // Centre of the first row's original: red; of the second row's: blue; of a counterfactual: green.
    const imageLeft = 6 + Math.floor((84 - 32) / 2);
    expect(pixel(imageLeft + 16, 22 + 16)).toEqual([255, 0, 0]);
    expect(pixel(imageLeft + 16, 22 + 68 + 16)).toEqual([0, 0, 255]);
    expect(pixel(6 + 90 + imageLeft - 6 + 16, 22 + 16)).toEqual([0, 255, 0]);
    // Somewhere in the caption band text was drawn (dark pixels).
    let dark = 0;
    for (let y = 22 + 32; y < 22 + 62; y++)
      for (let x = 0; x < info.width; x++) if (pixel(x, y)[0] < 128) dark++;
    expect(dark).toBeGreaterThan(20);
  });

  it('rejects rows whose cells do not match the column titles', async () => {
    await expect(
      renderCounterfactualGrid([{ label: ['x'], original: solid([0, 0, 0]), cells: [] }], {
        columnTitles: ['eps 1'],
      }),
    ).rejects.toThrow("'rows[0].cells' must have one cell per column title (1), got 0");
    await expect(
      renderCounterfactualGrid(
        [
          {
            label: ['x'],
            original: { data: new Float32Array(5), height: 2, width: 2, channels: 3 },
            cells: [],
          },
        ],
        { columnTitles: [] },
      ),
    ).rejects.toThrow("'image.data' must hold 2x2x3 = 12 values, got 5");
  });
});

describe('renderCurveChartSvg', () => {
  it('plots each series as a polyline whose heights follow the values', () => {
    const svg = renderCurveChartSvg({
      title: 'Confidence <vs> radius',
      xLabel: 'L2 radius',
      yLabel: 'mean confidence',
      x: [0, 1, 2, 3],
      series: [
        { name: 'in: true class', values: [0.9, 0.6, 0.3, 0.1] },
        { name: 'out: max', values: [0.2, 0.5, 0.8, 1] },
      ],
    });
    expect(svg.startsWith('<svg')).toBe(true);
    expect(svg).toContain('Confidence &lt;vs&gt; radius');
    const polylines = [...svg.matchAll(/<polyline class="series" data-name="([^"]+)" points="([^"]+)"/g)];
    expect(polylines.map((m) => m[1])).toEqual(['in: true class', 'out: max']);
    const ys = polylines.map((m) => m[2].split(' ').map((pt) => Number(pt.split(',')[1])));
    // SVG y grows downwards: falling values give growing y.
    expect(ys[0]).toEqual([...ys[0]].sort((a, b) => a - b));
    expect(ys[1]).toEqual([...ys[1]].sort((a, b) => b - a));
    // Value 1 sits on the plot's top edge (y = 40), 0 would be on the bottom (y = 330).
    expect(ys[1][3]).toBe(40);
  });

  it('rejects a series of the wrong length', () => {
    expect(() =>
      renderCurveChartSvg({
        title: '',
        xLabel: '',
        yLabel: '',
        x: [0, 1],
        series: [{ name: 's', values: [1] }],
      }),
    ).toThrow("series 's' must have 2 values (one per x), got 1");
  });

  it('escapes XML', () => {
    expect(escapeXml(`a<b & "c" 'd'>`)).toBe('a&lt;b &amp; &quot;c&quot; &apos;d&apos;&gt;');
  });
});

// The job page's throughput chart: an SVG drawn from the samples the server keeps for the job
// (cumulative bytes at moments, GET /admin/jobs/{id} `throughput`). No library, no canvas, so it
// scales with the page and reads as text to assistive technology.
import { formatBytes, secondsText } from './dom.js';

const SVG = 'http://www.w3.org/2000/svg';
const WIDTH = 600;
const HEIGHT = 160;
const PAD = { left: 8, right: 8, top: 22, bottom: 22 };

function el(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

/** Bytes per second between consecutive samples; a failed attempt's rollback reads as 0. */
export function rates(points) {
  const out = [];
  for (let i = 1; i < points.length; i += 1) {
    const secs = (points[i].at_ms - points[i - 1].at_ms) / 1000;
    if (secs > 0) out.push({ at_ms: points[i].at_ms, rate: Math.max(0, (points[i].bytes - points[i - 1].bytes) / secs) });
  }
  return out;
}

/** A one-line summary of the chart, for its label and for people who cannot see it. */
export function summary(points) {
  const r = rates(points);
  if (!r.length) return 'Not enough data for a chart yet.';
  const first = points[0];
  const last = points[points.length - 1];
  const peak = Math.max(...r.map((p) => p.rate));
  const span = (last.at_ms - first.at_ms) / 1000;
  const average = span > 0 ? (last.bytes - first.bytes) / span : 0;
  const took = secondsText(span);
  return `Throughput over ${took}: peak ${formatBytes(Math.round(peak))}/s, average ${formatBytes(Math.round(average))}/s.`;
}

/** The chart as an `<svg>`, or `null` with fewer than two samples. */
export function throughputChart(points) {
  const r = rates(points);
  if (!r.length) return null;
  const t0 = points[0].at_ms;
  const span = Math.max(1, r[r.length - 1].at_ms - t0);
  const peak = Math.max(1, ...r.map((p) => p.rate));
  const innerW = WIDTH - PAD.left - PAD.right;
  const innerH = HEIGHT - PAD.top - PAD.bottom;
  const x = (at) => PAD.left + ((at - t0) / span) * innerW;
  const y = (rate) => PAD.top + innerH - (rate / peak) * innerH;
  const label = summary(points);
  const svg = el('svg', {
    viewBox: `0 0 ${WIDTH} ${HEIGHT}`,
    class: 'throughput',
    role: 'img',
    'aria-label': label,
    preserveAspectRatio: 'none',
  });
  svg.append(el('title', {}, label));
  const line = [[x(t0), y(0)], ...r.map((p) => [x(p.at_ms), y(p.rate)])];
  const path = line.map(([px, py], i) => `${i ? 'L' : 'M'}${px.toFixed(1)},${py.toFixed(1)}`).join(' ');
  const base = y(0).toFixed(1);
  svg.append(el('path', { d: `${path} L${line[line.length - 1][0].toFixed(1)},${base} Z`, class: 'area' }));
  svg.append(el('path', { d: path, class: 'line' }));
  svg.append(el('line', { x1: PAD.left, x2: WIDTH - PAD.right, y1: base, y2: base, class: 'axis' }));
  svg.append(el('text', { x: PAD.left, y: 14, class: 'label' }, `peak ${formatBytes(Math.round(peak))}/s`));
  svg.append(el('text', { x: PAD.left, y: HEIGHT - 6, class: 'label' }, '0'));
  const took = secondsText(span / 1000);
  svg.append(el('text', { x: WIDTH - PAD.right, y: HEIGHT - 6, class: 'label end' }, took));
  return svg;
}

// A small line chart of a stream's download/upload speed and peers, as inline
// SVG drawn here: no library, no request anywhere.
//
// Speeds share the left scale, peers have their own; the numbers themselves
// are in the caption under the chart (HTML text stays crisp when the SVG is
// stretched to the card's width).

import { speed } from './format.js';

const SVG = 'http://www.w3.org/2000/svg';
const WIDTH = 300;
const HEIGHT = 80;
const PAD = 3;

const SERIES = [
  { field: 'speed_down', className: 'down', scale: 'speed' },
  { field: 'speed_up', className: 'up', scale: 'speed' },
  { field: 'peers', className: 'peers', scale: 'peers' },
];

function svgElement(name, attributes = {}) {
  const element = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, value);
  return element;
}

/** Creates an empty chart: a <figure> to place in the page and fill with draw(). */
export function createChart() {
  const figure = document.createElement('figure');
  figure.className = 'chart';
  const svg = svgElement('svg', {
    viewBox: `0 0 ${WIDTH} ${HEIGHT}`,
    preserveAspectRatio: 'none',
    role: 'img',
  });
  svg.append(svgElement('line', { class: 'grid', x1: 0, x2: WIDTH, y1: HEIGHT / 2, y2: HEIGHT / 2 }));
  for (const series of SERIES) {
    svg.append(svgElement('path', { class: `line ${series.className}`, d: '', 'vector-effect': 'non-scaling-stroke' }));
  }
  const caption = document.createElement('figcaption');
  figure.append(svg, caption);
  return figure;
}

/** The path of one series; a missing value breaks the line instead of drawing zero. */
function pathOf(samples, field, x, y) {
  let d = '';
  let drawing = false;
  for (const sample of samples) {
    const value = sample[field];
    if (value == null) {
      drawing = false;
      continue;
    }
    d += `${drawing ? 'L' : 'M'}${x(sample).toFixed(1)} ${y(value).toFixed(1)} `;
    drawing = true;
  }
  return d.trim();
}

/** Redraws the chart from the samples, oldest first: [{ts, peers, speed_down, speed_up}]. */
export function drawChart(figure, samples) {
  const svg = figure.querySelector('svg');
  const caption = figure.querySelector('figcaption');
  const times = samples.map((s) => Date.parse(s.ts));
  const first = Math.min(...times);
  const span = Math.max(1, Math.max(...times) - first);
  // Scales start at zero (a drop to half speed looks like one) and end at a
  // round number with some headroom; peers get more, so that a steady stream's
  // peers line does not hide its download line at the top.
  const max = {
    speed: niceCeiling(1.1 * Math.max(1, ...samples.flatMap((s) => [s.speed_down ?? 0, s.speed_up ?? 0]))),
    peers: niceCeiling(1.5 * Math.max(1, ...samples.map((s) => s.peers ?? 0))),
  };
  const x = (sample) => PAD + ((Date.parse(sample.ts) - first) / span) * (WIDTH - 2 * PAD);
  SERIES.forEach((series, i) => {
    const y = (value) => HEIGHT - PAD - (value / max[series.scale]) * (HEIGHT - 2 * PAD);
    svg.querySelectorAll('path')[i].setAttribute('d', pathOf(samples, series.field, x, y));
  });

  const last = samples[samples.length - 1];
  if (!last) {
    svg.setAttribute('aria-label', 'No statistics yet');
    caption.textContent = 'No statistics yet';
    return;
  }
  const summary = `down ${speed(last.speed_down)}, up ${speed(last.speed_up)}, ${last.peers ?? '–'} peers`;
  svg.setAttribute('aria-label', `Speed and peers over ${samples.length} samples; now ${summary}`);
  caption.replaceChildren(
    legend('down', `↓ ${speed(last.speed_down)}`),
    legend('up', `↑ ${speed(last.speed_up)}`),
    legend('peers', `${last.peers ?? '–'} peers`),
    legend('scale', `scale 0–${speed(max.speed)}, 0–${max.peers} peers`),
  );
}

/** The smallest of 1, 2, 2.5, 5 × 10^n that is at least `value`. */
function niceCeiling(value) {
  const power = 10 ** Math.floor(Math.log10(value));
  const step = [1, 2, 2.5, 5, 10].find((m) => m * power >= value);
  return step * power;
}

function legend(className, text) {
  const span = document.createElement('span');
  span.className = `legend ${className}`;
  span.textContent = text;
  return span;
}

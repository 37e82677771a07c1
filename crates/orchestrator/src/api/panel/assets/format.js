// Text for times, durations and rates. Pure functions of their arguments.

// The server's clock minus ours, learnt from each snapshot's `generated_at`, so
// "5m ago" is right even when the operator's device has the wrong time.
let skewMs = 0;

export function learnServerTime(generatedAt) {
  const server = Date.parse(generatedAt);
  if (!Number.isNaN(server)) skewMs = server - Date.now();
}

/** Now, on the server's clock, in milliseconds. */
export function now() {
  return Date.now() + skewMs;
}

/** "12s ago", "5m ago", "2h ago", "3d ago", or "Never" for a missing timestamp. */
export function ago(ts, at = now()) {
  if (!ts) return 'Never';
  const seconds = Math.max(0, Math.floor((at - Date.parse(ts)) / 1000));
  if (seconds < 60) return `${seconds}s ago`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes}m ago`;
  const hours = Math.floor(minutes / 60);
  if (hours < 48) return `${hours}h ago`;
  return `${Math.floor(hours / 24)}d ago`;
}

/** "45s", "3m 05s", "2h 04m", "3d 2h". */
export function duration(totalSeconds) {
  const s = Math.max(0, Math.floor(totalSeconds));
  const pad = (n) => String(n).padStart(2, '0');
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${pad(s % 60)}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${pad(Math.floor(s / 60) % 60)}m`;
  return `${Math.floor(s / 86400)}d ${Math.floor(s / 3600) % 24}h`;
}

/** Time since `ts` as a duration ("3m 05s"). */
export function since(ts, at = now()) {
  return ts ? duration((at - Date.parse(ts)) / 1000) : '–';
}

// Formatters are made once: toLocaleString() builds a new one at every call,
// which costs more than everything else of a redraw when a page shows
// hundreds of check times.
const CLOCK = new Intl.DateTimeFormat([], { hour: '2-digit', minute: '2-digit', second: '2-digit', hour12: false });
const FULL = new Intl.DateTimeFormat([], {
  year: 'numeric', month: 'numeric', day: 'numeric', hour: 'numeric', minute: 'numeric', second: 'numeric',
});

/** The local wall-clock time of `ts`, "14:03:05". */
export function clock(ts) {
  if (!ts) return '–';
  return CLOCK.format(new Date(ts));
}

/** The full local date and time of `ts`, for tooltips. */
export function fullTime(ts) {
  return ts ? FULL.format(new Date(ts)) : 'never';
}

/** Engine speeds are in KB/s. */
export function speed(kbPerSecond) {
  if (kbPerSecond == null) return '–';
  if (kbPerSecond >= 10240) return `${(kbPerSecond / 1024).toFixed(1)} MB/s`;
  return `${Math.round(kbPerSecond)} KB/s`;
}

export function bytes(n) {
  if (n == null) return '–';
  const units = ['B', 'KB', 'MB', 'GB', 'TB'];
  let value = n;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(unit === 0 ? 0 : 1)} ${units[unit]}`;
}

export function millis(ms) {
  return ms == null ? '–' : `${ms < 10 ? ms.toFixed(1) : Math.round(ms)} ms`;
}

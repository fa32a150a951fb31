/**
 * Cursors (docs/gateway.md, "Cursors and resume"): `<partition>=<position>` for each partition
 * a channel's messages can be in, comma-separated — `"3=1042"`, `"0=17,1=5,2=9,3=40"`. A
 * position is an offset (Kafka, the embedded log; `-1` for "before the first record") or a
 * Kinesis sequence number (digits, up to 128 of them), so positions compare as integers of any
 * size.
 */

/** Partition → position, or null when `text` is not a cursor. */
export function parseCursor(text: string): Map<number, string> | null {
  const out = new Map<number, string>();
  if (text === '') {
    return out;
  }
  for (const part of text.split(',')) {
    const eq = part.indexOf('=');
    if (eq <= 0) {
      return null;
    }
    const p = part.slice(0, eq);
    const pos = part.slice(eq + 1);
    if (!/^\d+$/.test(p) || !/^-?\d+$/.test(pos)) {
      return null;
    }
    out.set(Number(p), pos);
  }
  return out;
}

/** Compares two positions (decimal integers of any length, maybe negative). */
export function comparePositions(a: string, b: string): number {
  const na = a.startsWith('-');
  const nb = b.startsWith('-');
  if (na !== nb) {
    return na ? -1 : 1;
  }
  const da = stripZeros(na ? a.slice(1) : a);
  const db = stripZeros(nb ? b.slice(1) : b);
  let c = da.length - db.length;
  if (c === 0) {
    c = da < db ? -1 : da > db ? 1 : 0;
  }
  c = Math.sign(c);
  return na ? -c : c;
}

function stripZeros(digits: string): string {
  const s = digits.replace(/^0+/, '');
  return s === '' ? '0' : s;
}

/** The cursor as text, partitions in ascending order. */
export function formatCursor(cursor: Map<number, string>): string {
  return [...cursor.entries()]
    .sort((x, y) => x[0] - y[0])
    .map(([p, pos]) => `${p}=${pos}`)
    .join(',');
}

/**
 * The newest of two cursors of one channel: per partition, the further position, and every
 * partition either names. Frames of one connection come in bus order, but a `subscribed` frame
 * carries the gateway's own position, which can be behind a `since` it was given (an instance
 * that has read less than the one the client came from), and replayed unacknowledged alerts
 * carry the cursor of their time: merging keeps the client from stepping back. A cursor that
 * does not parse replaces the current one.
 */
export function mergeCursors(current: string | null | undefined, seen: string): string {
  if (current === null || current === undefined) {
    return seen;
  }
  const a = parseCursor(current);
  const b = parseCursor(seen);
  if (a === null || b === null) {
    return seen;
  }
  for (const [p, pos] of b) {
    const have = a.get(p);
    if (have === undefined || comparePositions(pos, have) > 0) {
      a.set(p, pos);
    }
  }
  return formatCursor(a);
}

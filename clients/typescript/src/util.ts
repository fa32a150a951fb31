/** A random (v4) UUID: `crypto.randomUUID()` where there is one, `getRandomValues` otherwise. */
export function randomUUID(): string {
  const c = (globalThis as { crypto?: Crypto }).crypto;
  if (c !== undefined && typeof c.randomUUID === 'function') {
    return c.randomUUID();
  }
  const b = new Uint8Array(16);
  if (c !== undefined && typeof c.getRandomValues === 'function') {
    c.getRandomValues(b);
  } else {
    for (let i = 0; i < 16; i++) {
      b[i] = Math.floor(Math.random() * 256);
    }
  }
  b[6] = (b[6]! & 0x0f) | 0x40;
  b[8] = (b[8]! & 0x3f) | 0x80;
  const h = [...b].map((x) => x.toString(16).padStart(2, '0')).join('');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/** The `exp` and `iat` claims of a JWT (seconds since the epoch), where they can be read. */
export function jwtTimes(token: string): { exp?: number; iat?: number } {
  const parts = token.split('.');
  if (parts.length !== 3 || typeof atob !== 'function') {
    return {};
  }
  try {
    let b64 = parts[1]!.replace(/-/g, '+').replace(/_/g, '/');
    b64 += '='.repeat((4 - (b64.length % 4)) % 4);
    const claims = JSON.parse(atob(b64)) as { exp?: unknown; iat?: unknown } | null;
    const num = (v: unknown): number | undefined =>
      typeof v === 'number' && Number.isFinite(v) ? v : undefined;
    const out: { exp?: number; iat?: number } = {};
    const exp = num(claims?.exp);
    const iat = num(claims?.iat);
    if (exp !== undefined) out.exp = exp;
    if (iat !== undefined) out.iat = iat;
    return out;
  } catch {
    return {};
  }
}

/** The `exp` claim of a JWT (seconds since the epoch), or undefined if it cannot be read. */
export function jwtExpiry(token: string): number | undefined {
  return jwtTimes(token).exp;
}

/** Bytes of `text` in UTF-8. */
export function utf8Length(text: string): number {
  if (typeof TextEncoder === 'function') {
    return new TextEncoder().encode(text).length;
  }
  let n = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c < 0x80) n += 1;
    else if (c < 0x800) n += 2;
    else if (c >= 0xd800 && c <= 0xdbff) {
      n += 4;
      i++;
    } else n += 3;
  }
  return n;
}

/**
 * The subprotocols that carry `token` (browsers cannot set headers on a WebSocket, and a token in
 * the URL is written to the access logs of proxies and load balancers): `pitboss.v1`, which the
 * gateway selects, and `pitboss.token.<jwt>`.
 */
export function tokenProtocols(token: string): string[] {
  return ['pitboss.v1', `pitboss.token.${token}`];
}

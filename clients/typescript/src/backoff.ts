/** How long to wait between reconnect attempts. */
export interface BackoffOptions {
  /** The first attempt's ceiling, in milliseconds. */
  initialMs: number;
  /** No attempt waits longer than this, in milliseconds. */
  maxMs: number;
  /**
   * The share of the delay that is random, from 0 to 1. 1 is "full jitter" (the default): the
   * delay is uniform in [0, ceiling), so clients that lost the same gateway do not all come back
   * at the same instant. 0 makes the delay exactly the ceiling.
   */
  jitter: number;
}

export const DEFAULT_BACKOFF: BackoffOptions = { initialMs: 500, maxMs: 30_000, jitter: 1 };

/**
 * The delay before reconnect attempt `attempt` (0 for the first): the ceiling
 * `min(maxMs, initialMs * 2^attempt)`, of which the `jitter` share is random:
 * `ceiling * (1 - jitter * random())`.
 */
export function backoffDelay(
  attempt: number,
  options: BackoffOptions = DEFAULT_BACKOFF,
  random: () => number = Math.random,
): number {
  const initial = Math.max(0, options.initialMs);
  const max = Math.max(initial, options.maxMs);
  const jitter = Math.min(1, Math.max(0, options.jitter));
  // 2^attempt overflows to Infinity past ~1024; min() keeps it at max.
  const ceiling = Math.min(max, initial * Math.pow(2, Math.max(0, Math.floor(attempt))));
  const r = Math.min(1, Math.max(0, random()));
  return Math.round(ceiling * (1 - jitter * r));
}

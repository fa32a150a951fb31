/** A minimal typed event emitter (no dependency on Node's `events`, so it runs in browsers). */
export class Emitter<Events extends { [K in keyof Events]: unknown[] }> {
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  private readonly listeners = new Map<keyof Events, Set<(...args: any[]) => void>>();

  /** Adds a listener; returns a function that removes it. */
  on<K extends keyof Events>(event: K, listener: (...args: Events[K]) => void): () => void {
    let set = this.listeners.get(event);
    if (set === undefined) {
      set = new Set();
      this.listeners.set(event, set);
    }
    set.add(listener);
    return () => this.off(event, listener);
  }

  /** Adds a listener called at most once. */
  once<K extends keyof Events>(event: K, listener: (...args: Events[K]) => void): () => void {
    const off = this.on(event, (...args: Events[K]) => {
      off();
      listener(...args);
    });
    return off;
  }

  off<K extends keyof Events>(event: K, listener: (...args: Events[K]) => void): void {
    this.listeners.get(event)?.delete(listener);
  }

  /** How many listeners `event` has. */
  listenerCount<K extends keyof Events>(event: K): number {
    return this.listeners.get(event)?.size ?? 0;
  }

  /**
   * Calls every listener of `event`; a listener that throws does not stop the others (its error
   * is reported asynchronously, as an uncaught error, so it is not lost).
   */
  protected emit<K extends keyof Events>(event: K, ...args: Events[K]): void {
    const set = this.listeners.get(event);
    if (set === undefined) {
      return;
    }
    for (const l of [...set]) {
      try {
        l(...args);
      } catch (e) {
        setTimeout(() => {
          throw e;
        }, 0);
      }
    }
  }
}

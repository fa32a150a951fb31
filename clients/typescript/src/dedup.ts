/**
 * A bounded set of the most recent ids: once `capacity` ids are held, adding one forgets the
 * oldest. Used per channel so a message delivered again (after a resume, or an operator's
 * unacknowledged alert replayed on every subscribe) reaches the application once.
 */
export class RecentIds {
  readonly capacity: number;
  private readonly ids = new Set<string>();
  private readonly ring: (string | undefined)[];
  private next = 0;

  constructor(capacity: number) {
    if (!Number.isFinite(capacity) || capacity < 1) {
      throw new RangeError(`RecentIds capacity must be at least 1, got ${capacity}`);
    }
    this.capacity = Math.floor(capacity);
    this.ring = new Array<string | undefined>(this.capacity);
  }

  has(id: string): boolean {
    return this.ids.has(id);
  }

  /** Adds `id`; false if it was already held (a duplicate). */
  add(id: string): boolean {
    if (this.ids.has(id)) {
      return false;
    }
    const evicted = this.ring[this.next];
    if (evicted !== undefined) {
      this.ids.delete(evicted);
    }
    this.ring[this.next] = id;
    this.next = (this.next + 1) % this.capacity;
    this.ids.add(id);
    return true;
  }

  get size(): number {
    return this.ids.size;
  }

  clear(): void {
    this.ids.clear();
    this.ring.fill(undefined);
    this.next = 0;
  }
}

/** Edit distance (insertions, deletions, substitutions, adjacent swaps) between two words. */
export function distance(a: string, b: string): number {
  const rows = a.length + 1;
  const cols = b.length + 1;
  const d: number[][] = Array.from({ length: rows }, (_, i) => Array.from({ length: cols }, (_, j) => (i === 0 ? j : j === 0 ? i : 0)));
  for (let i = 1; i < rows; i++) {
    for (let j = 1; j < cols; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      let best = Math.min(d[i - 1]![j]! + 1, d[i]![j - 1]! + 1, d[i - 1]![j - 1]! + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) best = Math.min(best, d[i - 2]![j - 2]! + 1);
      d[i]![j] = best;
    }
  }
  return d[a.length]![b.length]!;
}

/**
 * The candidate nearest to `word` (case-insensitive), if it is near enough to be a likely
 * typo: within a third of the word's length, or one that contains the word or is contained
 * in it (`LOGLEVEL` for `LOG_LEVEL`, `RETIRE` for `RETIRE_AT`). Null when nothing is close.
 */
export function closest(word: string, candidates: readonly string[]): string | null {
  const w = word.toUpperCase();
  const squash = (s: string) => s.toUpperCase().replace(/[^A-Z0-9]/g, '');
  let best: string | null = null;
  let bestScore = Infinity;
  for (const c of candidates) {
    const score = Math.min(distance(w, c.toUpperCase()), distance(squash(w), squash(c)));
    if (score < bestScore) {
      best = c;
      bestScore = score;
    }
  }
  if (best === null) return null;
  const near = bestScore <= Math.max(2, Math.floor(w.length / 3));
  const contained = squash(w).length >= 4 && (squash(best).startsWith(squash(w)) || squash(w).startsWith(squash(best)));
  return near || contained ? best : null;
}

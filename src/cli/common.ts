/** Option parsing shared by the CLI commands. */
import { InvalidArgumentError } from "../errors.js";

export function parseIntOption(name: string, min = 0): (v: string) => number {
  return (v: string) => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min) throw new InvalidArgumentError(`${name} must be an integer >= ${min}, got "${v}"`);
    return n;
  };
}

export function parseFloatOption(name: string): (v: string) => number {
  return (v: string) => {
    const n = Number(v);
    if (!Number.isFinite(n)) throw new InvalidArgumentError(`${name} must be a number, got "${v}"`);
    return n;
  };
}

/** "1,2,3" → [1, 2, 3] */
export function parseTokenList(v: string): number[] {
  const parts = v.split(",").map((s) => s.trim()).filter((s) => s.length > 0);
  if (parts.length === 0) throw new InvalidArgumentError(`--tokens needs a comma-separated list of token ids, got "${v}"`);
  return parts.map((s) => {
    const n = Number(s);
    if (!Number.isInteger(n) || n < 0) throw new InvalidArgumentError(`--tokens: "${s}" is not a token id (a non-negative integer)`);
    return n;
  });
}

/** Bytes with optional KiB/MiB/GiB (powers of 1024) or KB/MB/GB (powers of 1000) suffix; K/M/G alone = 1024-based. */
export function parseBytes(v: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?)(B?)\s*$/i.exec(v);
  if (!m) throw new InvalidArgumentError(`"${v}" is not a size: use bytes or a suffix like 512MiB, 3GiB, 3GB, 3G`);
  const n = Number(m[1]);
  const unit = m[2].toUpperCase();
  const binary = m[3] !== "" || m[4] === "";
  const pow = { "": 0, K: 1, M: 2, G: 3, T: 4 }[unit as "" | "K" | "M" | "G" | "T"];
  return Math.round(n * Math.pow(binary ? 1024 : 1000, pow));
}

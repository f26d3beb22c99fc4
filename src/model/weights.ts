/**
 * ModelWeights: typed, shape-checked access to a model's tensors by canonical GGUF name.
 * Matrices stay in their GGUF type (the backend computes on the blocks); vectors (norms, biases)
 * are dequantized to f32. Every tensor is loaded once and cached; `loadAll` loads them all up front
 * (the all-resident path), mapped from the file where the backend can map; `loadAllBut` all but the
 * experts (under a memory budget, through the ExpertStore's reader).
 */
import type { WeightMatrix } from "../backend/backend.js";
import type { FileMapper, TensorData, TensorMeta, WeightSource } from "../formats/model-file.js";
import { dequantize } from "../formats/quant/dequantize.js";
import { BACKEND_TYPES, COMPUTE_TYPES, GGMLType, rowBytes, typeName } from "../formats/quant/types.js";
import { FileAccessError, MissingTensorError, UnsupportedError, ModelFormatError } from "../errors.js";

/** A stacked `[n_expert, rows, cols]` tensor (GGUF dims [cols, rows, n_expert]). */
export interface StackedMatrix {
  readonly type: GGMLType;
  readonly nExpert: number;
  readonly rows: number;
  readonly cols: number;
  /** bytes of one expert's slice */
  readonly expertBytes: number;
  readonly meta: TensorMeta;
}

/** A backend's re-lay of a matrix (Backend.relayout): the new matrix, or null to keep it. */
export type Relayout = (w: WeightMatrix, unitRows: number) => WeightMatrix | null;

function dimsText(d: readonly number[]): string {
  return `[${d.join(", ")}]`;
}

export class ModelWeights {
  private readonly matrices = new Map<string, WeightMatrix>();
  private readonly vectors = new Map<string, Float32Array>();
  private readonly perRow = new Set<string>();
  /** bytes of the tensors loadAll loaded, by name */
  private readonly loaded = new Map<string, Uint8Array>();
  /** tensors the model uses: every name checked through meta (Model.open checks each one) */
  private readonly declared = new Set<string>();
  /** the backend's re-lay for tensors loadAll loaded (absent: matrices keep the file's layout) */
  private relayout?: Relayout;
  /** whole stacked expert tensors as matrices, re-laid where the backend does */
  private readonly stacks = new Map<string, WeightMatrix>();

  constructor(readonly source: WeightSource) {}

  /** Whether `name` can still be read a few rows at a time (a 2-D tensor stored verbatim in a file, not loaded whole yet). */
  canReadRows(name: string): boolean {
    const m = this.source.tensors.get(name);
    return this.source.loadRows !== undefined && m !== undefined && m.file !== undefined && m.dims.length === 2 && !this.matrices.has(name) && !this.loaded.has(name);
  }

  /**
   * From now on `gatherRows(name)` reads just the rows it is asked for from the file instead of
   * loading the whole tensor (the token embeddings under a memory budget: one row per token).
   * False, and nothing changes, where the tensor cannot be read by rows or is already loaded.
   */
  readRowsOnDemand(name: string): boolean {
    if (!this.canReadRows(name)) return false;
    this.perRow.add(name);
    return true;
  }

  /**
   * The rows `ids` of a `rows x cols` matrix: `matrix` holds them (the whole tensor, or just these
   * rows when it is read on demand) and `index[i]` is where row ids[i] is in it.
   */
  gatherRows(name: string, rows: number, cols: number, ids: readonly number[]): { matrix: WeightMatrix; index: number[] } {
    if (!this.perRow.has(name)) {
      // the file's layout (a re-laid matrix has no rows to gather)
      const m = this.meta(name, [cols, rows]);
      return { matrix: { type: m.type, rows, cols, data: this.bytes(name) }, index: [...ids] };
    }
    const m = this.meta(name, [cols, rows]);
    const unique = [...new Set(ids)];
    const at = new Map(unique.map((id, i) => [id, i]));
    const data = this.source.loadRows!(name, rowBytes(m.type, cols), unique);
    return { matrix: { type: m.type, rows: unique.length, cols, data }, index: ids.map((id) => at.get(id)!) };
  }

  has(name: string): boolean {
    return this.source.tensors.has(name);
  }

  /** The tensor's description, checked against the expected GGUF-order dims and a type moira computes with; the model uses it (loadAll loads it). */
  meta(name: string, dims: readonly number[]): TensorMeta {
    const m = this.checkShape(name, dims);
    if (!COMPUTE_TYPES.includes(m.type) && !BACKEND_TYPES.includes(m.type)) {
      throw new UnsupportedError(
        `tensor ${name} has type ${typeName(m.type)}, which moira cannot compute with; supported: ${COMPUTE_TYPES.map(typeName).join(", ")} (re-quantize the model)`,
      );
    }
    this.declared.add(name);
    return m;
  }

  /** The tensor's description, checked against the expected GGUF-order dims only: for tensors the model never reads. */
  checkShape(name: string, dims: readonly number[]): TensorMeta {
    const m = this.source.tensors.get(name);
    if (!m) throw new MissingTensorError(`tensor ${name} is missing from the model (expected ${dimsText(dims)})`);
    const same = m.dims.length === dims.length && m.dims.every((d, i) => d === dims[i]);
    // GGUF allows trailing 1s to be dropped or kept
    const squeezed = (d: readonly number[]) => { const r = [...d]; while (r.length > 1 && r[r.length - 1] === 1) r.pop(); return r; };
    const sq = squeezed(m.dims), se = squeezed(dims);
    if (!same && !(sq.length === se.length && sq.every((d, i) => d === se[i]))) {
      throw new ModelFormatError(`tensor ${name}: expected shape ${dimsText(dims)}, found ${dimsText(m.dims)}`);
    }
    return m;
  }

  /**
   * Refuses (UnsupportedError) a model whose used tensors include a type only some backends compute
   * (BACKEND_TYPES) that `backend` does not (its extraTypes).
   */
  checkBackendTypes(backend: { readonly name: string; readonly extraTypes?: readonly GGMLType[] }): void {
    for (const name of this.declared) {
      const type = this.source.tensors.get(name)!.type;
      if (COMPUTE_TYPES.includes(type) || backend.extraTypes?.includes(type)) continue;
      throw new UnsupportedError(
        `tensor ${name} has type ${typeName(type)}, a layout of moira's own (moira repack writes it), which the ${backend.name} backend does not compute here: ` +
        "such a copy is for the native backend on a CPU with AVX-512; use the model file it was re-laid from",
      );
    }
  }

  /** Every tensor the model uses (those checked through meta), with its size in bytes. */
  used(): Array<{ readonly name: string; readonly bytes: number }> {
    return [...this.declared].map((name) => ({ name, bytes: this.source.tensors.get(name)?.nbytes ?? 0 }));
  }

  /**
   * Loads now, once, every tensor the model uses (those checked through meta), so that the first
   * forward finds all weights in memory instead of reading them (or faulting them in page by page)
   * as it goes. With `map` (the backend's file mapper) tensors stored verbatim in the file are
   * mapped instead of copied: the native one maps the page cache privately and populates the
   * mapping, in 2 MiB pages where the page cache has them, so there is no copy, no page fault in
   * the forward, and the memory is shared with the page cache. A tensor that cannot be mapped is
   * read. For the all-resident path only: under a memory budget experts come from the ExpertStore
   * and must not be loaded whole.
   */
  loadAll(options: { map?: FileMapper; relayout?: Relayout } = {}): void {
    this.relayout = options.relayout;
    const names = this.unloaded();
    const load = (map: FileMapper | undefined) => {
      if (this.source.loadMany) return this.source.loadMany(names, { map });
      return new Map(names.map((n) => [n, this.source.load(n, { map })]));
    };
    let tensors: Map<string, TensorData>;
    try {
      tensors = load(options.map);
    } catch (e) {
      if (!options.map || !(e instanceof FileAccessError)) throw e;
      tensors = load(undefined);
    }
    for (const [name, t] of tensors) this.loaded.set(name, t.data);
  }

  /**
   * Loads now every tensor the model uses but those `skip` names and those read by rows, the ones
   * stored verbatim in the file through `read` (many file ranges in one call: the ExpertStore's
   * reader under a memory budget, whose I/O threads read them in parallel with O_DIRECT), so that
   * the first forward does not read them one at a time through the page cache.
   */
  loadAllBut(skip: (name: string) => boolean, read: (ranges: ReadonlyArray<{ fileOffset: number; length: number }>) => Uint8Array[]): void {
    const metas = this.unloaded().filter((n) => !skip(n)).map((n) => this.source.tensors.get(n)!);
    const stored = metas.filter((m) => m.file !== undefined);
    read(stored.map((m) => ({ fileOffset: m.file!.offset, length: m.nbytes }))).forEach((bytes, i) => this.loaded.set(stored[i]!.name, bytes));
    for (const m of metas) if (m.file === undefined) this.loaded.set(m.name, this.source.load(m.name).data);
  }

  /** Tensors the model uses that are neither loaded, built, nor read by rows. */
  private unloaded(): string[] {
    return [...this.declared].filter((n) => !(this.loaded.has(n) || this.matrices.has(n) || this.vectors.has(n) || this.perRow.has(n)));
  }

  /**
   * Re-lays now, with the re-lay loadAll was given, every loaded matrix (2-D) and stacked tensor
   * (3-D: each expert's rows whole) but those named in `except`, so that the first forward does not
   * pay for it. Nothing without a re-lay.
   */
  relayoutLoaded(except: readonly string[] = []): void {
    if (!this.relayout) return;
    for (const name of this.loaded.keys()) {
      const m = this.source.tensors.get(name);
      if (!m || except.includes(name)) continue;
      const [cols, rows, nExpert] = m.dims;
      if (m.dims.length === 2) this.matrix(name, rows, cols);
      else if (m.dims.length === 3) this.stackedMatrix(name, this.stacked(name, nExpert, rows, cols));
    }
  }

  /** A tensor's bytes: loaded by loadAll, else read now. */
  private bytes(name: string): Uint8Array {
    return this.loaded.get(name) ?? this.source.load(name).data;
  }

  /** A `rows x cols` matrix (GGUF dims [cols, rows]); re-laid by the backend if loadAll loaded it with a re-lay. */
  matrix(name: string, rows: number, cols: number): WeightMatrix {
    let w = this.matrices.get(name);
    if (!w) {
      const m = this.meta(name, [cols, rows]);
      w = this.relaid(name, { type: m.type, rows, cols, data: this.bytes(name) }, rows);
      this.matrices.set(name, w);
    }
    return w;
  }

  /** w in the backend's layout where loadAll loaded `name` with a re-lay and the backend re-lays it, else w. */
  private relaid(name: string, w: WeightMatrix, unitRows: number): WeightMatrix {
    return this.relayout && this.loaded.has(name) ? this.relayout(w, unitRows) ?? w : w;
  }

  optionalMatrix(name: string, rows: number, cols: number): WeightMatrix | null {
    return this.has(name) ? this.matrix(name, rows, cols) : null;
  }

  /** A 1-D tensor of n elements, as f32. */
  vector(name: string, n: number): Float32Array {
    let v = this.vectors.get(name);
    if (!v) {
      const m = this.meta(name, [n]);
      const data = this.bytes(name);
      v = m.type === GGMLType.F32
        ? new Float32Array(data.buffer.slice(data.byteOffset, data.byteOffset + n * 4))
        : dequantize(m.type, data, n);
      this.vectors.set(name, v);
    }
    return v;
  }

  optionalVector(name: string, n: number): Float32Array | null {
    return this.has(name) ? this.vector(name, n) : null;
  }

  /** A matrix computed once from other tensors (e.g. a layout the checkpoint splits differently). */
  derivedMatrix(name: string, build: () => WeightMatrix): WeightMatrix {
    let w = this.matrices.get(name);
    if (!w) this.matrices.set(name, (w = build()));
    return w;
  }

  /** A whole tensor dequantized to f32 (for small tensors that need rearranging). */
  tensorF32(name: string, dims: readonly number[]): Float32Array {
    const m = this.meta(name, dims);
    const n = dims.reduce((a, b) => a * b, 1);
    const data = this.bytes(name);
    return m.type === GGMLType.F32 ? new Float32Array(data.buffer.slice(data.byteOffset, data.byteOffset + n * 4)) : dequantize(m.type, data, n);
  }

  /** Describes a stacked expert tensor without loading it. */
  stacked(name: string, nExpert: number, rows: number, cols: number): StackedMatrix {
    const meta = this.meta(name, [cols, rows, nExpert]);
    return { type: meta.type, nExpert, rows, cols, expertBytes: rows * rowBytes(meta.type, cols), meta };
  }

  /** Loads a stacked tensor's bytes (all experts), in the file's layout. */
  stackedData(name: string): Uint8Array {
    return this.bytes(name);
  }

  /**
   * A stacked tensor as one [nExpert * rows, cols] matrix, re-laid like `matrix` (each expert's rows
   * whole): expert e's rows are its data's e-th nExpert-th part.
   */
  stackedMatrix(name: string, s: StackedMatrix): WeightMatrix {
    let w = this.stacks.get(name);
    if (!w) {
      w = this.relaid(name, { type: s.type, rows: s.nExpert * s.rows, cols: s.cols, data: this.bytes(name).subarray(0, s.nExpert * s.expertBytes) }, s.rows);
      this.stacks.set(name, w);
    }
    return w;
  }
}

/** Typed GGUF metadata values, for the code that writes `{arch}.*` keys (converters, make-model). */
import { GGUFValueType, type GGUFMetadataValue } from "./model-file.js";

export const u32 = (value: number): GGUFMetadataValue => ({ type: GGUFValueType.UINT32, value });
export const f32 = (value: number): GGUFMetadataValue => ({ type: GGUFValueType.FLOAT32, value });
export const bool = (value: boolean): GGUFMetadataValue => ({ type: GGUFValueType.BOOL, value });
export const str = (value: string): GGUFMetadataValue => ({ type: GGUFValueType.STRING, value });

/** `{arch}.*` keys by the part after the architecture prefix (`expert_count`, `rope.freq_base`), in the order they are written. */
export type ArchKeys = Array<[string, GGUFMetadataValue]>;

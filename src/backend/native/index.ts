export { loadNativeAddon, type Isa, type NativeAddon } from "./addon.js";
export { NativeBackend, type NativeBackendOptions } from "./native-backend.js";
export {
  AlignedBuffer, allocAligned, DirectReader, MappedFile, type DirectReaderOptions, fileIdentity, type FileIdentity, ReadError, sameFile,
} from "./io.js";

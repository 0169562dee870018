// The safetensors file format (https://github.com/huggingface/safetensors): an 8-byte
// little-endian header length n, n bytes of UTF-8 JSON (padded with spaces to a multiple of 8),
// then the tensors' bytes, little-endian and row-major, back to back in the header's offsets.
// Writing streams each tensor from its typed array in blocks (never one buffer of the whole file)
// to a temporary name renamed at the end, so an interrupted save leaves no file that loads.
// Reading checks every field before it allocates a tensor, and a SHA-256 over the header's
// entries and the data (CHECKSUM_KEY in __metadata__) refuses a file altered after it was written.
//
// The parts, each a module of src/safetensors/: format.ts (the types, the dtypes, the error),
// write.ts, read.ts and checksum.ts. This module is the one the rest imports.

export {
  CHECKSUM_KEY,
  dtypeOf,
  MAX_HEADER_BYTES,
  put,
  type SafetensorsDType,
  SafetensorsError,
  type SafetensorsFile,
  type Tensor,
  type TensorData,
} from "./safetensors/format.ts";
export { readSafetensors } from "./safetensors/read.ts";
export { writeSafetensors } from "./safetensors/write.ts";

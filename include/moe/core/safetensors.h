// safetensors: 8-byte little-endian header length, a JSON header
//   {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...,
//    "__metadata__": {"key": "string value", ...}}
// padded with spaces to a multiple of 8, then the raw little-endian data. Offsets are relative
// to the end of the header. Reading validates everything (sizes, offsets, overlap, dtype, shape)
// and names the file and field on error; writing is atomic (see file_io.h).
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace moe {

enum class DType { F32, F64, I32, I64, BF16, U8, F16 };
const char* dtype_name(DType d);
std::size_t dtype_size(DType d);

struct TensorInfo {
  DType dtype;
  std::vector<int64_t> shape;
  std::size_t begin = 0, end = 0;  // byte offsets into the data section
  int64_t numel() const;
};

std::string shape_str(const std::vector<int64_t>& shape);

class SafeTensorsReader {
 public:
  explicit SafeTensorsReader(const std::string& path);  // mmaps the file
  ~SafeTensorsReader();
  SafeTensorsReader(const SafeTensorsReader&) = delete;
  SafeTensorsReader& operator=(const SafeTensorsReader&) = delete;

  const std::string& path() const { return path_; }
  bool has(const std::string& name) const { return tensors_.count(name) != 0; }
  const TensorInfo& info(const std::string& name) const;
  std::vector<std::string> names() const;  // sorted
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // Metadata value or a clear error naming the file and key.
  const std::string& meta(const std::string& key) const;

  // Copies a tensor after checking dtype and shape; error names file, tensor, expected and found.
  void read_into(const std::string& name, DType dtype, const std::vector<int64_t>& shape,
                 void* dst) const;
  std::vector<float> read_f32(const std::string& name, std::vector<int64_t>* shape = nullptr) const;
  std::vector<double> read_f64(const std::string& name,
                               std::vector<int64_t>* shape = nullptr) const;
  std::vector<int32_t> read_i32(const std::string& name,
                                std::vector<int64_t>* shape = nullptr) const;
  const void* raw(const std::string& name) const;
  // dst[0..numel) = the tensor widened to f32 (exact) when it is F32, BF16 or F16, after
  // checking its shape; other dtypes are an error naming the file and tensor.
  void read_as_f32(const std::string& name, const std::vector<int64_t>& shape, float* dst) const;

 private:
  std::string path_;
  const unsigned char* map_ = nullptr;
  std::size_t size_ = 0;
  const unsigned char* data_ = nullptr;
  std::map<std::string, TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
};

// dst[0..n) = n values of dtype d (F32, BF16 or F16) at src, widened to f32 exactly.
void convert_to_f32(DType d, const void* src, float* dst, std::size_t n);

struct TensorRef {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  const void* data;
};

// Tensors are laid out in the order given. Metadata values must be strings (the format's rule).
void write_safetensors(const std::string& path, const std::vector<TensorRef>& tensors,
                       const std::map<std::string, std::string>& metadata);

}  // namespace moe

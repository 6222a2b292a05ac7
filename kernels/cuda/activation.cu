// The GPU versions of src/activation.rs: the decoder's gated SiLU over the fused gate|up
// projection and the encoder's tanh-approximated GELU. One kernel per element type (f32, bf16,
// f16), named `<op>_<type>`; every kernel computes in f32 and walks its elements grid-stride.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_f32(__half x) { return __half2float(x); }

template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x) { return __float2bfloat16(x); }
template <> __device__ __forceinline__ __half from_f32<__half>(float x) { return __float2half(x); }

// out[r][i] = silu(gate_up[r][i]) * gate_up[r][inter + i], gate_up [rows, 2 * inter], out [rows, inter].
template <typename T>
__device__ void silu_mul(const T *gate_up, T *out, unsigned long long rows, unsigned long long inter) {
    const unsigned long long total = rows * inter;
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < total;
         i += (unsigned long long)blockDim.x * gridDim.x) {
        const unsigned long long row = i / inter, col = i - row * inter;
        const float gate = to_f32(gate_up[row * 2 * inter + col]);
        const float up = to_f32(gate_up[row * 2 * inter + inter + col]);
        out[i] = from_f32<T>(gate / (1.0f + expf(-gate)) * up);
    }
}

// out = 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))), PyTorch's gelu(approximate="tanh").
template <typename T>
__device__ void gelu_tanh(const T *input, T *out, unsigned long long len) {
    const float sqrt_2_over_pi = 0.7978845608028654f;
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < len;
         i += (unsigned long long)blockDim.x * gridDim.x) {
        const float x = to_f32(input[i]);
        const float inner = sqrt_2_over_pi * (x + 0.044715f * x * x * x);
        out[i] = from_f32<T>(0.5f * x * (1.0f + tanhf(inner)));
    }
}

#define ACTIVATIONS(SUFFIX, T)                                                                      \
    extern "C" __global__ void silu_mul_##SUFFIX(const T *gate_up, T *out, unsigned long long rows, \
                                                 unsigned long long inter) {                        \
        silu_mul<T>(gate_up, out, rows, inter);                                                     \
    }                                                                                               \
    extern "C" __global__ void gelu_tanh_##SUFFIX(const T *input, T *out, unsigned long long len) { \
        gelu_tanh<T>(input, out, len);                                                              \
    }

ACTIVATIONS(f32, float)
ACTIVATIONS(bf16, __nv_bfloat16)
ACTIVATIONS(f16, __half)

// Rotary embedding on the device: accurate angles and the rotation of rows held in
// shared memory (key tiles as they are loaded, query tiles once per block).
#pragma once

#include "common.cuh"

namespace rerope_cuda {

// cos/sin of pos * theta. The product and its reduction to [-pi, pi] run in double
// (positions reach 1e5 and more, where a float angle is off by ~1e-2 rad); the
// reduced angle then goes through the fast float sincos, accurate to ~4e-7 there.
__device__ __forceinline__ void rot_cos_sin(double pos, double theta, float & c, float & s) {
    const double a = pos * theta;
    const double n = rint(a * 0.15915494309189535);
    const double r = fma(-n, 6.283185307179586, a);
    __sincosf((float) r, &s, &c);
}

// Indices of unit u of a row (d/2 units): a rotated pair when u < n_rot/2, else two
// unrotated dimensions.
__device__ __forceinline__ void unit_dims(int u, int n_rot, int rope_mode, int & da, int & db) {
    const int half_rot = n_rot / 2;
    if (u < half_rot) {
        if (rope_mode == 2) {  // NEOX
            da = u;
            db = u + half_rot;
        } else {
            da = 2 * u;
            db = da + 1;
        }
    } else {
        da = n_rot + 2 * (u - half_rot);
        db = da + 1;
    }
}

// dst[r] = R_pos(r) src[r] for `rows` rows of D elements, pos given by pos_of(r).
// Shared by all threads of the block; callers synchronise around it.
template <int D, typename Src, typename Dst, typename PosFn>
__device__ __forceinline__ void rotate_rows(const Src * src, int src_stride, Dst * dst, int dst_stride, int rows,
                                            PosFn pos_of, const double * theta, int n_rot, int rope_mode,
                                            int tid, int nthreads) {
    const int half_rot = n_rot / 2;
    for (int idx = tid; idx < rows * (D / 2); idx += nthreads) {
        const int r = idx / (D / 2);
        const int u = idx % (D / 2);
        int da, db;
        unit_dims(u, n_rot, rope_mode, da, db);
        const float xa = to_float(src[r * src_stride + da]);
        const float xb = to_float(src[r * src_stride + db]);
        float ya = xa, yb = xb;
        if (u < half_rot) {
            float c, s;
            rot_cos_sin(pos_of(r), theta[u], c, s);
            ya = xa * c - xb * s;
            yb = xa * s + xb * c;
        }
        dst[r * dst_stride + da] = from_float<Dst>(ya);
        dst[r * dst_stride + db] = from_float<Dst>(yb);
    }
}

}  // namespace rerope_cuda

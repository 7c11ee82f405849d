// Rotary embedding on the device: accurate angles, the rotation of rows held in shared
// memory (key tiles as they are loaded) and the staging of query tiles for both paths.
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
        if (rope_mode == GGML_REROPE_MODE_NEOX) {
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
                                            PosFn pos_of, const double * theta, int n_rot, int rope_mode, int tid,
                                            int nthreads) {
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

// The query rows of a tile, rotated for both paths (near: to their position i; far: to
// far_q_pos(i)), scaled by their factor (s_qfac) and stored as f16 rows of stride SD: the A
// operands of the tensor-core kernels. Rows nrows .. rows - 1 pad the tile with zeros;
// q_row(r) points at row r's D query values. Shared by all threads; callers synchronise.
template <int D, int SD, typename QRowFn>
__device__ __forceinline__ void stage_query_rows(const AttnArgs & a, int rows, int nrows, QRowFn q_row,
                                                 const int * s_qpos, const float * s_qfac, const double * theta,
                                                 half * sQn, half * sQf, int tid, int nthreads) {
    for (int idx = tid; idx < rows * (D / 2); idx += nthreads) {
        const int r = idx / (D / 2), u = idx % (D / 2);
        int da, db;
        unit_dims(u, a.n_rot, a.rope_mode, da, db);
        const int i = s_qpos[r];
        float xa = 0.f, xb = 0.f;
        if (r < nrows) {
            const float * qr = q_row(r);
            xa = qr[da];
            xb = qr[db];
        }
        const float f = s_qfac[r];
        float na = xa, nb = xb, fa = xa, fb = xb;
        if (u < a.n_rot / 2 && r < nrows) {  // padding rows stay zero
            float c, s;
            rot_cos_sin((double) i, theta[u], c, s);
            na = xa * c - xb * s, nb = xa * s + xb * c;
            rot_cos_sin(far_q_pos(a, i), theta[u], c, s);
            fa = xa * c - xb * s, fb = xa * s + xb * c;
        }
        sQn[r * SD + da] = __float2half_rn(na * f), sQn[r * SD + db] = __float2half_rn(nb * f);
        sQf[r * SD + da] = __float2half_rn(fa * f), sQf[r * SD + db] = __float2half_rn(fb * f);
    }
}

}  // namespace rerope_cuda

// Workgroup-wide sums over WG invocations (the prelude's workgroup size, a power of two, at most
// 256). The importer declares its entry points with `ids: Ids`.
//
// The tree path uses workgroup memory only. With SUBGROUPS each subgroup adds its lanes in
// hardware first and the tree shrinks to one value per subgroup. Either way the summation order
// is fixed by the code, so every workgroup that reduces the same data gets the same bits: the
// CG kernels rely on that to make identical decisions in every workgroup.

struct Ids {
    @builtin(local_invocation_index) lid: u32,
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
#ifdef SUBGROUPS
    @builtin(subgroup_invocation_id) sg_lane: u32,
    @builtin(subgroup_size) sg_size: u32,
    @builtin(subgroup_id) sg_id: u32,
    @builtin(num_subgroups) sg_count: u32,
#endif
}

var<workgroup> reduce_buf: array<vec4<f32>, WG>;

// The sum of `v` over the workgroup, returned to every invocation as a uniform value.
fn workgroup_sum4(v: vec4<f32>, ids: Ids) -> vec4<f32> {
#ifdef SUBGROUPS
    let s = subgroupAdd(v);
    if ids.sg_lane == 0u {
        reduce_buf[ids.sg_id] = s;
    }
    workgroupBarrier();
    var t = vec4<f32>(0.0);
    for (var i = ids.sg_lane; i < ids.sg_count; i += ids.sg_size) {
        t += reduce_buf[i];
    }
    let total = subgroupAdd(t);
    workgroupBarrier();
    if ids.lid == 0u {
        reduce_buf[0] = total;
    }
#else
    reduce_buf[ids.lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if ids.lid < s {
            reduce_buf[ids.lid] += reduce_buf[ids.lid + s];
        }
        workgroupBarrier();
    }
#endif
    let sum = workgroupUniformLoad(&reduce_buf[0]);
    // nobody may overwrite reduce_buf (a following call) before everyone has read it
    workgroupBarrier();
    return sum;
}

fn workgroup_sum(v: f32, ids: Ids) -> f32 {
    return workgroup_sum4(vec4<f32>(v, 0.0, 0.0, 0.0), ids).x;
}

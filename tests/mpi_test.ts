// mpi_test.ts: distributed: "mpi" where Open MPI cannot be loaded (LSOFTMAX_MPI_LIB naming a
// file that is not there) is an Error saying what to install, and the library keeps working;
// the option's errors. The ranks themselves are checked under mpirun (tests/mpi/ranks_check.ts,
// `make test-mpi`).

import assert from "node:assert/strict";
import { MarginHead } from "../mod.ts";

const base = { classes: 6, features: 3, kind: "cosface", scale: 4, margin: 0.2 } as const;

Deno.test("distributed: mpi without Open MPI says what to install; the library still works", () => {
  Deno.env.set("LSOFTMAX_MPI_LIB", "/nonexistent/libmpi.so.40");
  try {
    assert.throws(
      () => new MarginHead({ ...base, backend: "cpu", distributed: "mpi" }),
      /distributed: "mpi" needs Open MPI's libmpi\.so\.40 \(Debian\/Ubuntu: apt-get install openmpi-bin libopenmpi-dev\) and the program started by mpirun: .*nonexistent/,
    );
  } finally {
    Deno.env.delete("LSOFTMAX_MPI_LIB");
  }
  using head = new MarginHead({ ...base, backend: "cpu" });
  assert.equal(head.rank, 0);
  assert.equal(head.worldSize, 1);
  assert.ok(Number.isFinite(head.step(new Float32Array(6), new Int32Array([1, 2])).loss));
});

Deno.test("distributed: the option's errors name it", () => {
  assert.throws(
    () => new MarginHead({ ...base, distributed: "gloo" as "mpi" }),
    /^RangeError: distributed: expected "mpi" or "nccl" \(or none\), got "gloo"$/,
  );
  assert.throws(
    () => new MarginHead({ ...base, backend: "cpu", distributed: "nccl" }),
    /^TypeError: backend: expected a CUDA backend with distributed: "nccl", got "cpu"$/,
  );
  assert.throws(
    () => new MarginHead({ ...base, backend: ["cpu", "cpu"], distributed: "mpi" }),
    /backend: expected one backend per rank with distributed: "mpi", got a list of 2/,
  );
});

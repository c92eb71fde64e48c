//! The disassembler's exact text for a small program (a golden test: the format is stable).

use crate::prog_builder::*;
use neuron_isa::disasm::disassemble;
use neuron_isa::{
    ActFunc, AluOp, Ap, Dim, Dtype, Engine, KernelInfo, Memory, Op, Operand, TensorKind,
};

#[test]
fn disassembly_of_a_small_program() {
    let k = |mut i: neuron_isa::Instruction| {
        i.kernel = 0;
        i
    };
    let strided = Ap {
        dims: vec![Dim { size: 4, stride: 2 }],
        ..sb(Dtype::F32, 0, 128, 8192, 4)
    };
    let two_d = Ap {
        dims: vec![
            Dim {
                size: 2,
                stride: 16,
            },
            Dim {
                size: 16,
                stride: 1,
            },
        ],
        ..Ap::on_chip(Memory::Sbuf, Dtype::Bf16, 64, 32, 0, 32)
    };
    let mut p = program(
        vec![
            (
                Engine::Dma(0),
                vec![
                    k(ins(
                        Op::Dma {
                            dst: sb(Dtype::Bf16, 0, 128, 0, 128),
                            src: Ap::hbm_rows(
                                neuron_isa::TensorId(0),
                                Dtype::Bf16,
                                0,
                                128,
                                256,
                                128,
                            ),
                        },
                        &[],
                        &[0],
                    )),
                    k(ins(
                        Op::Dma {
                            dst: sb(Dtype::Bf16, 0, 128, 256, 512),
                            src: hbm(1, Dtype::Bf16, 0, 128, 512),
                        },
                        &[],
                        &[0],
                    )),
                    k(ins(
                        Op::Dma {
                            dst: hbm(2, Dtype::F32, 0, 128, 512),
                            src: sb(Dtype::F32, 0, 128, 2048, 512),
                        },
                        &[(2, 1)],
                        &[],
                    )),
                ],
            ),
            (
                Engine::Tensor,
                vec![k(ins(
                    matmul(
                        ps(Dtype::F32, 0, 128, 0, 512),
                        sb(Dtype::Bf16, 0, 128, 0, 128),
                        sb(Dtype::Bf16, 0, 128, 256, 512),
                        true,
                    ),
                    &[(0, 2)],
                    &[1],
                ))],
            ),
            (
                Engine::Scalar,
                vec![k(ins(
                    Op::Activation {
                        dst: sb(Dtype::F32, 0, 128, 2048, 512),
                        src: ps(Dtype::F32, 0, 128, 0, 512),
                        func: ActFunc::Gelu,
                        scale: Operand::Imm(1.0),
                        bias: Some(Operand::PerPartition(sb(Dtype::F32, 0, 128, 4096, 1))),
                        accum: None,
                    },
                    &[(1, 1)],
                    &[2],
                ))],
            ),
            (
                Engine::Vector,
                vec![
                    op(Op::TensorScalar {
                        dst: strided.clone(),
                        src: strided,
                        op0: AluOp::Sub,
                        operand0: Operand::Imm(1.0),
                        reverse0: true,
                        op1: AluOp::Bypass,
                        operand1: Operand::Imm(0.0),
                        reverse1: false,
                    }),
                    ins(
                        Op::Memset {
                            dst: two_d,
                            value: 0.5,
                        },
                        &[(1, 1), (2, 1)],
                        &[0, 1],
                    ),
                ],
            ),
        ],
        3,
        vec![
            tensor("x", TensorKind::Input, &[128, 256], Dtype::Bf16),
            tensor("w", TensorKind::Weight, &[128, 512], Dtype::Bf16),
            tensor("y", TensorKind::Output, &[128, 512], Dtype::F32),
        ],
    );
    p.kernels.push(KernelInfo {
        name: "fc1+gelu".into(),
        kind: "matmul".into(),
        nodes: vec!["fc1".into(), "gelu".into()],
        flops: 16_777_216,
        hbm_bytes: 458_752,
        tiling: "m128 n512 k128".into(),
    });
    let expected = "\
; program: 4 streams, 7 instructions, 3 semaphores
tensors:
  t0 'x' input bf16[128, 256] 65536 bytes
  t1 'w' weight bf16[128, 512] 131072 bytes
  t2 'y' output f32[128, 512] 262144 bytes
kernels:
  k0 fc1+gelu kind=matmul nodes=[fc1, gelu] flops=16777216 hbm_bytes=458752 tiling=\"m128 n512 k128\"
stream 0 dma0 (3 instructions):
   0: dma sb:bf16@p0+128:0[128] <- t0:bf16@0[128x256][128] signal(s0) ; k0
   1: dma sb:bf16@p0+128:256[512] <- t1:bf16@0[128x512][512] signal(s0) ; k0
   2: dma t2:f32@0[128x512][512] <- sb:f32@p0+128:2048[512] wait(s2>=1) ; k0
stream 1 tensor (1 instructions):
   0: matmul ps:f32@p0+128:0[512] <- sb:bf16@p0+128:0[128], sb:bf16@p0+128:256[512] acc wait(s0>=2) signal(s1) ; k0
stream 2 scalar (1 instructions):
   0: activation sb:f32@p0+128:2048[512] <- ps:f32@p0+128:0[512] func=gelu scale=1.0 bias=sb:f32@p0+128:4096[1] wait(s1>=1) signal(s2) ; k0
stream 3 vector (2 instructions):
   0: tensor_scalar sb:f32@p0+128:8192[4/2] <- sb:f32@p0+128:8192[4/2] op0=sub(rev 1.0) op1=bypass(0.0)
   1: memset sb:bf16@p64+32:0[2/16,16] value=0.5 wait(s1>=1,s2>=1) signal(s0,s1)
";
    assert_eq!(disassemble(&p), expected);
}

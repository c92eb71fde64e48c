//! A readable, stable text form of a [`Program`], for dumps, golden tests and people.
//!
//! Layout: a summary line, the HBM tensor table, the kernel table, then one block per
//! stream with one line per instruction:
//!
//! ```text
//!   12: matmul ps:f32@p0+128:0[512] <- sb:bf16@p0+128:0[128], sb:bf16@p0+128:256[512] acc wait(s3>=2) signal(s4) ; k0
//! ```
//!
//! that is: index, opcode, destination, `<-`, sources, op attributes (`acc`, `func=`,
//! `op=`, scalar operands, ...), waits, signals and the kernel id (`k0`, named in the kernel table). Access patterns use their `Display` form ([`crate::Ap`]). The format is
//! stable: changing it breaks golden tests on purpose.

use crate::instr::{Instruction, NO_KERNEL, Op, Operand};
use crate::program::{Program, TensorKind};
use std::fmt::Write;

/// Disassembles `program` into its text form.
pub fn disassemble(program: &Program) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = write_program(&mut out, program);
    out
}

/// Disassembles one instruction (without index), as in [`disassemble`]'s lines.
pub fn instruction_text(program: &Program, instr: &Instruction) -> String {
    let mut out = String::new();
    let _ = write_instruction(&mut out, program, instr);
    out
}

fn write_program(out: &mut String, p: &Program) -> std::fmt::Result {
    writeln!(
        out,
        "; program: {} streams, {} instructions, {} semaphores",
        p.streams.len(),
        p.instruction_count(),
        p.semaphores
    )?;
    writeln!(out, "tensors:")?;
    for (i, t) in p.tensors.iter().enumerate() {
        let kind = match t.kind {
            TensorKind::Input => "input",
            TensorKind::Output => "output",
            TensorKind::Weight => "weight",
            TensorKind::Scratch => "scratch",
        };
        let shape: Vec<String> = t.shape.iter().map(u64::to_string).collect();
        writeln!(
            out,
            "  t{i} '{}' {kind} {}[{}] {} bytes",
            t.name,
            t.dtype,
            shape.join(", "),
            t.bytes()
        )?;
    }
    writeln!(out, "kernels:")?;
    for (i, k) in p.kernels.iter().enumerate() {
        write!(out, "  k{i} {} kind={}", k.name, k.kind)?;
        if !k.nodes.is_empty() {
            write!(out, " nodes=[{}]", k.nodes.join(", "))?;
        }
        write!(out, " flops={} hbm_bytes={}", k.flops, k.hbm_bytes)?;
        if !k.tiling.is_empty() {
            write!(out, " tiling=\"{}\"", k.tiling)?;
        }
        writeln!(out)?;
    }
    for (si, s) in p.streams.iter().enumerate() {
        writeln!(
            out,
            "stream {si} {} ({} instructions):",
            s.engine,
            s.instrs.len()
        )?;
        for (i, instr) in s.instrs.iter().enumerate() {
            write!(out, "{i:>4}: ")?;
            write_instruction(out, p, instr)?;
            writeln!(out)?;
        }
    }
    Ok(())
}

fn operand(o: &Operand) -> String {
    match o {
        Operand::Imm(v) => format!("{v:?}"),
        Operand::PerPartition(ap) => ap.to_string(),
    }
}

fn write_instruction(out: &mut String, p: &Program, instr: &Instruction) -> std::fmt::Result {
    write!(out, "{} ", instr.op.opcode())?;
    match &instr.op {
        Op::Dma { dst, src }
        | Op::Transpose { dst, src }
        | Op::BnStats { dst, src }
        | Op::BnAggr { dst, src }
        | Op::TensorCopy { dst, src } => write!(out, "{dst} <- {src}")?,
        Op::DmaGather {
            dst,
            table,
            indices,
        } => write!(out, "{dst} <- {table} idx={indices}")?,
        Op::Matmul {
            dst,
            stationary,
            moving,
            accumulate,
        } => {
            write!(out, "{dst} <- {stationary}, {moving}")?;
            if *accumulate {
                write!(out, " acc")?;
            }
        }
        Op::Activation {
            dst,
            src,
            func,
            scale,
            bias,
            accum,
        } => {
            write!(
                out,
                "{dst} <- {src} func={} scale={}",
                func.name(),
                operand(scale)
            )?;
            if let Some(b) = bias {
                write!(out, " bias={}", operand(b))?;
            }
            if let Some(a) = accum {
                write!(out, " accum={a}")?;
            }
        }
        Op::TensorTensor { dst, a, b, op } => write!(out, "{dst} <- {a}, {b} op={}", op.name())?,
        Op::TensorScalar {
            dst,
            src,
            op0,
            operand0,
            reverse0,
            op1,
            operand1,
            reverse1,
        } => {
            let rev = |r: bool| if r { "rev " } else { "" };
            write!(
                out,
                "{dst} <- {src} op0={}({}{}) op1={}({}{})",
                op0.name(),
                rev(*reverse0),
                operand(operand0),
                op1.name(),
                rev(*reverse1),
                operand(operand1)
            )?;
        }
        Op::TensorReduce {
            dst,
            src,
            op,
            axes,
            negate,
        } => {
            write!(out, "{dst} <- {src} op={} axes={axes}", op.name())?;
            if *negate {
                write!(out, " negate")?;
            }
        }
        Op::Memset { dst, value } => write!(out, "{dst} value={value:?}")?,
        Op::Select {
            dst,
            pred,
            on_true,
            on_false,
        } => write!(out, "{dst} <- {pred}, {on_true}, {on_false}")?,
        Op::Iota {
            dst,
            offset,
            channel_multiplier,
            steps,
        } => {
            let steps: Vec<String> = steps.iter().map(i32::to_string).collect();
            write!(
                out,
                "{dst} offset={offset} channel_multiplier={channel_multiplier} steps=[{}]",
                steps.join(",")
            )?;
        }
    }
    if !instr.wait.is_empty() {
        let w: Vec<String> = instr
            .wait
            .iter()
            .map(|w| format!("{}>={}", w.sem, w.count))
            .collect();
        write!(out, " wait({})", w.join(","))?;
    }
    if !instr.signal.is_empty() {
        let s: Vec<String> = instr.signal.iter().map(|s| s.to_string()).collect();
        write!(out, " signal({})", s.join(","))?;
    }
    if instr.kernel != NO_KERNEL {
        match p.kernels.get(instr.kernel as usize) {
            // The id only: the kernel table above names it once (a fused kernel's name joins
            // all its nodes' names; repeating it per line made listings quadratic).
            Some(_) => write!(out, " ; k{}", instr.kernel)?,
            None => write!(out, " ; k{} (unknown)", instr.kernel)?,
        }
    }
    Ok(())
}

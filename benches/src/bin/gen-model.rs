//! `gen-model bert-large|decoder-7b|bert-base-b1|bert-base-b16 OUT.json`: writes a generated
//! model.json with seeded weights (see `neuron_benches::Transformer`; the BERT-base models are
//! the fidelity table's, `neuron_benches::bert_base_json`).

use neuron_benches::Transformer;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(kind), Some(out)) = (args.first(), args.get(1)) else {
        eprintln!("usage: gen-model bert-large|decoder-7b|bert-base-b1|bert-base-b16 OUT.json");
        return ExitCode::from(2);
    };
    let batch = match kind.as_str() {
        "bert-base-b1" => Some(1),
        "bert-base-b16" => Some(16),
        _ => None,
    };
    if let Some(batch) = batch {
        if let Err(e) = std::fs::write(out, neuron_benches::bert_base_json(batch, 12)) {
            eprintln!("error: cannot write {out}: {e}");
            return ExitCode::from(1);
        }
        eprintln!("wrote {out}: BERT-base, 12 layers, seq 128, batch {batch}");
        return ExitCode::SUCCESS;
    }
    let t = match kind.as_str() {
        "bert-large" => Transformer::bert_large(),
        "decoder-7b" => Transformer::decoder_7b(),
        other => {
            eprintln!(
                "error: unknown model '{other}': expected bert-large, decoder-7b, bert-base-b1 or bert-base-b16"
            );
            return ExitCode::from(2);
        }
    };
    if let Err(e) = std::fs::write(out, t.model_json(kind)) {
        eprintln!("error: cannot write {out}: {e}");
        return ExitCode::from(1);
    }
    eprintln!("wrote {out}: {} weight parameters", t.params());
    ExitCode::SUCCESS
}

//! `gen-model bert-large|decoder-7b|bert-base-layer OUT.json`: writes a generated
//! model.json with seeded weights (see `neuron_benches::Transformer`).

use neuron_benches::Transformer;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(kind), Some(out)) = (args.first(), args.get(1)) else {
        eprintln!("usage: gen-model bert-large|decoder-7b OUT.json");
        return ExitCode::from(2);
    };
    let t = match kind.as_str() {
        "bert-large" => Transformer::bert_large(),
        "decoder-7b" => Transformer::decoder_7b(),
        other => {
            eprintln!("error: unknown model '{other}': expected bert-large or decoder-7b");
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

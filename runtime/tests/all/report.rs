//! `neuron-sim report`: the HTML page parses as XML and holds the summary's numbers, the
//! insights, the flame graph and the charts, with no external resource.

use crate::common::*;
use assert_cmd::Command;
use neuron_runtime::html::{report_dir, utilization};
use neuron_runtime::{Model, RunOptions, Summary, write_profile};
use quick_xml::Reader;
use quick_xml::events::Event;
use std::collections::BTreeMap;

#[derive(Debug, Default)]
struct Node {
    name: String,
    attrs: BTreeMap<String, String>,
    children: Vec<Node>,
    text: String,
}

impl Node {
    fn all_text(&self) -> String {
        let mut s = self.text.clone();
        for c in &self.children {
            s.push(' ');
            s.push_str(&c.all_text());
        }
        s
    }

    fn find<'a>(&'a self, pred: &dyn Fn(&Node) -> bool, out: &mut Vec<&'a Node>) {
        if pred(self) {
            out.push(self);
        }
        for c in &self.children {
            c.find(pred, out);
        }
    }

    fn by_id(&self, id: &str) -> &Node {
        let mut v = Vec::new();
        self.find(&|n| n.attrs.get("id").is_some_and(|i| i == id), &mut v);
        assert_eq!(v.len(), 1, "id {id}");
        v[0]
    }

    fn all(&self, name: &str) -> Vec<&Node> {
        let mut v = Vec::new();
        self.find(&|n| n.name == name, &mut v);
        v
    }
}

fn element(e: &quick_xml::events::BytesStart<'_>) -> Node {
    let mut n = Node {
        name: String::from_utf8_lossy(e.name().as_ref()).to_string(),
        ..Node::default()
    };
    for a in e.attributes() {
        let a = a.unwrap();
        n.attrs.insert(
            String::from_utf8_lossy(a.key.as_ref()).to_string(),
            String::from_utf8_lossy(&a.value).to_string(),
        );
    }
    n
}

/// Parses the page as XML (panicking on anything not well-formed) into a tree.
fn parse(text: &str) -> Node {
    let mut reader = Reader::from_str(text);
    reader.config_mut().check_end_names = true;
    let mut stack = vec![Node::default()];
    loop {
        match reader.read_event() {
            Ok(Event::Start(e)) => stack.push(element(&e)),
            Ok(Event::Empty(e)) => {
                let n = element(&e);
                stack.last_mut().unwrap().children.push(n);
            }
            Ok(Event::End(_)) => {
                let n = stack.pop().unwrap();
                stack.last_mut().unwrap().children.push(n);
            }
            Ok(Event::Text(t)) => {
                stack
                    .last_mut()
                    .unwrap()
                    .text
                    .push_str(&String::from_utf8_lossy(&t));
            }
            Ok(Event::Eof) => break,
            Ok(_) => {}
            Err(e) => panic!(
                "report is not well-formed at {}: {e}",
                reader.buffer_position()
            ),
        }
    }
    assert_eq!(stack.len(), 1, "unclosed elements");
    let mut doc = stack.pop().unwrap();
    assert_eq!(doc.children.len(), 1, "one root element");
    doc.children.pop().unwrap()
}

fn profile(dir: &std::path::Path) -> Summary {
    let m = Model::from_artifact(mlp_artifact(256, 6)).unwrap();
    let mut b = m.bind();
    b.generate_missing(1).unwrap();
    let exec = m.execute(&b, &RunOptions::default()).unwrap();
    write_profile(dir, &m, &exec.stats).unwrap();
    Summary::new(&m, &exec.stats).unwrap()
}

#[test]
fn report_parses_and_holds_summary_insights_flame_graph_and_charts() {
    let dir = tempfile::tempdir().unwrap();
    let prof = dir.path().join("prof");
    let s = profile(&prof);
    let page = report_dir(&prof).unwrap();
    let html = parse(&page);
    assert_eq!(html.name, "html");

    let summary = html.by_id("summary").all_text();
    for want in [
        format!("{:.3}", s.latency_ns / 1000.0),
        s.cycles.to_string(),
        format!("{:.2}", s.mfu_percent),
        format!("{:.2}", s.mbu_percent),
        s.hbm_read_bytes.to_string(),
        s.hbm_write_bytes.to_string(),
    ] {
        assert!(summary.contains(&want), "summary lacks {want}: {summary}");
    }

    assert!(!s.insights.is_empty());
    let items = html.by_id("insights").all("li");
    assert_eq!(items.len(), s.insights.len());
    for (li, i) in items.iter().zip(&s.insights) {
        let t = li.all_text();
        assert!(t.contains(i.kind.name()), "{t}");
        assert!(
            t.contains(&format!("{:.3} us", i.saving_ns / 1000.0)),
            "{t}"
        );
    }

    // The flame graph is inferno's SVG, inline, and the page's first SVG (its script
    // looks up the first one).
    let flame = html.by_id("flame");
    let svgs = flame.all("svg");
    assert!(
        svgs[0].attrs.contains_key("xmlns:fg"),
        "{:?}",
        svgs[0].attrs
    );
    let flame_text = flame.all_text();
    for k in ["mlp", "fc1", "load", "fc1_relu"] {
        assert!(flame_text.contains(k), "flame graph lacks {k}");
    }
    assert!(std::ptr::eq(html.all("svg")[0], svgs[0]));

    // The charts: inline SVG.
    let roof = html.by_id("roofline");
    assert_eq!(roof.all("svg").len(), 1);
    assert!(
        roof.all_text()
            .contains("roofline: bf16 peak 91.75 TFLOP/s")
    );
    assert!(roof.all_text().contains("fc1"));
    let util = html.by_id("utilization");
    assert_eq!(util.all("svg").len(), 1);
    let legend = util.all_text();
    for e in ["tensor", "vector", "scalar", "dma"] {
        assert!(legend.contains(e), "utilization legend lacks {e}");
    }

    // Kernel table: one row per kernel plus the header.
    assert_eq!(html.by_id("kernels").all("tr").len(), s.kernels.len() + 1);

    // Self-contained: nothing loaded from elsewhere.
    let mut linked = Vec::new();
    html.find(
        &|n| {
            n.attrs.iter().any(|(k, v)| {
                (k == "src" || k.ends_with("href")) && !v.starts_with('#') && !v.is_empty()
            })
        },
        &mut linked,
    );
    assert!(
        linked.is_empty(),
        "{:?}",
        linked.iter().map(|n| &n.attrs).collect::<Vec<_>>()
    );
}

#[test]
fn utilization_buckets_average_to_the_engine_active_share() {
    let dir = tempfile::tempdir().unwrap();
    let prof = dir.path().join("prof");
    let s = profile(&prof);
    let trace: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(prof.join("trace.json")).unwrap()).unwrap();
    let u = utilization(&trace, s.latency_ns, 50);
    let mean = |k: &str| u[k].iter().sum::<f64>() / 50.0;
    let e = &s.engine_active_percent;
    for (k, want) in [("tensor", e.tensor), ("vector", e.vector), ("dma", e.dma)] {
        assert!((mean(k) - want).abs() < 0.01, "{k}: {} vs {want}", mean(k));
    }
    assert!(u["dma"].iter().all(|&v| (0.0..=100.0).contains(&v)));
}

#[test]
fn cli_writes_the_page_and_names_a_missing_profile() {
    let dir = tempfile::tempdir().unwrap();
    let prof = dir.path().join("prof");
    profile(&prof);
    let out = dir.path().join("r.html");
    Command::new(env!("CARGO_BIN_EXE_neuron-sim"))
        .arg("report")
        .arg(&prof)
        .arg("-o")
        .arg(&out)
        .assert()
        .success();
    parse(&std::fs::read_to_string(&out).unwrap());
    let o = Command::new(env!("CARGO_BIN_EXE_neuron-sim"))
        .arg("report")
        .arg(dir.path().join("nope"))
        .arg("-o")
        .arg(&out)
        .assert()
        .code(1)
        .get_output()
        .clone();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("nope") && err.contains("summary.json"),
        "{err}"
    );
}

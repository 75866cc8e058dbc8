//! `topology/paper.toml` carries every parameter of the reference experiment (arXiv
//! 2511.19333), and both shipped topologies pass `topology check`.

use distillery::registry::processor_types;
use distillery_runtime::Topology;
use distillery_tests::repo_root;

fn load(name: &str) -> Topology {
    let path = repo_root().join("topology").join(name);
    let topology = Topology::load(&path).unwrap();
    let problems = topology.check(&processor_types());
    assert!(problems.is_empty(), "{name}: {problems:?}");
    topology
}

fn setting<'a>(t: &'a Topology, processor: &str, key: &str) -> &'a toml::Value {
    t.processors[processor].settings.get(key).unwrap_or_else(|| panic!("{processor}.settings.{key} is missing"))
}

#[test]
fn the_paper_topology_reproduces_the_papers_parameters() {
    let t = load("paper.toml");
    // Data: 300k math questions of Nemotron-Post-Training-Dataset-v1.
    let files = setting(&t, "feeder", "files").as_array().unwrap();
    assert_eq!(files[0]["format"].as_str(), Some("nemotron"));
    assert_eq!(files[0]["limit"].as_integer(), Some(300_000));
    assert!(files[0]["uri"].as_str().unwrap().contains("Nemotron-Post-Training-Dataset-v1"));
    // Teachers: gpt-oss-120b live (no system prompt), DeepSeek-R1 replayed from the dataset.
    assert_eq!(setting(&t, "sampler-gpt-oss", "teacher").as_str(), Some("gpt-oss-120b"));
    assert_eq!(setting(&t, "sampler-gpt-oss", "model").as_str(), Some("openai/gpt-oss-120b"));
    assert_eq!(setting(&t, "sampler-gpt-oss", "system_prompt").as_str(), Some(""));
    assert_eq!(setting(&t, "sampler-deepseek-r1", "teacher").as_str(), Some("deepseek-r1"));
    let replay = &setting(&t, "sampler-deepseek-r1", "replay")["dataset"];
    assert_eq!(replay["format"].as_str(), Some("nemotron"));
    assert_eq!(replay["uri"].as_str(), files[0]["uri"].as_str(), "R1 traces come from the questions' own rows");
    assert_eq!(
        replay["dataset"].as_str(),
        files[0]["dataset"].as_str(),
        "same dataset name, so the question ids match"
    );
    // Judge and agreement: Qwen3-30B-A3B-Thinking-2507; keep questions both teachers solved.
    assert_eq!(setting(&t, "judge", "model").as_str(), Some("Qwen/Qwen3-30B-A3B-Thinking-2507"));
    // ... with the paper's Appendix A system prompt (the judge's default: no `prompt_file`).
    let judge = distillery_judge::config::JudgeSettings::from_table(&t.processors["judge"].settings).unwrap();
    assert_eq!(judge.prompt_file, None);
    assert_eq!(judge.system_prompt().unwrap(), distillery_judge::config::DEFAULT_SYSTEM_PROMPT);
    assert!(distillery_judge::config::DEFAULT_SYSTEM_PROMPT.starts_with("You are a meticulous and intelligent judge"));
    let required: Vec<_> =
        setting(&t, "agreement", "required_teachers").as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(required, ["gpt-oss-120b", "deepseek-r1"]);
    // Two teacher styles x two students: four packers and four trainers. Every sample is
    // rendered with the Nemotron-Nano-12B-v2 chat template and tokenized with the student's
    // own tokenizer (Nemotron's, and Mistral-Nemo's Tekken); 60k-token rows by
    // first-fit-decreasing.
    let students = [
        ("nemotron", "NVIDIA-Nemotron-Nano-12B-v2-Base", "tokenizer.json"),
        ("mistral-nemo", "Mistral-Nemo-Base-2407", "tekken.json"),
    ];
    let styles = [("gpt-oss", "gpt-oss-120b"), ("deepseek-r1", "deepseek-r1")];
    let packers: Vec<_> = t.processors.iter().filter(|(_, p)| p.kind == "packer").map(|(n, _)| n.as_str()).collect();
    let trainers: Vec<_> = t.processors.iter().filter(|(_, p)| p.kind == "trainer").map(|(n, _)| n.as_str()).collect();
    assert_eq!(packers.len(), 4, "{packers:?}");
    assert_eq!(trainers.len(), 4, "{trainers:?}");
    for (student, model, tokenizer_file) in students {
        for (style, teacher) in styles {
            let packer = format!("packer-{student}-{style}");
            let shards = format!("shards.{student}.{style}");
            assert_eq!(t.processors[&packer].outputs["shards"], shards);
            assert_eq!(setting(&t, &packer, "style").as_str(), Some(teacher));
            assert_eq!(setting(&t, &packer, "row_tokens").as_integer(), Some(60_000));
            assert_eq!(setting(&t, &packer, "algorithm").as_str(), Some("first-fit-decreasing"));
            assert!(setting(&t, &packer, "tokenizer_config")
                .as_str()
                .unwrap()
                .contains("NVIDIA-Nemotron-Nano-12B-v2/"));
            let tokenizer = setting(&t, &packer, "tokenizer").as_str().unwrap();
            assert!(tokenizer.contains(model) && tokenizer.ends_with(tokenizer_file), "{packer}: {tokenizer}");
            assert_eq!(t.topics[&shards].partitions, 1, "one shard order for every restart");

            // Training: the torch engine, 3,000 steps, global batch 64, AdamW, lr 5e-6, warmup
            // 3% from 5e-7, cosine, completion-only loss.
            let trainer = format!("trainer-{student}-{style}");
            assert_eq!(t.processors[&trainer].inputs, [shards.clone()]);
            let settings = distillery_trainer::TrainerSettings::from_table(&t.processors[&trainer].settings).unwrap();
            assert_eq!(settings.engine, distillery_trainer::config::TrainerEngine::Torch);
            assert_eq!(settings.student, format!("s3://models/{model}"));
            assert_eq!(settings.style, teacher);
            assert_eq!(settings.steps, 3000);
            assert_eq!(settings.global_batch_rows, 64);
            assert_eq!(settings.optimizer, "adamw");
            assert_eq!(settings.learning_rate, 5e-6);
            assert_eq!(settings.warmup_ratio, 0.03);
            assert_eq!(settings.warmup_start_lr, 5e-7);
            assert_eq!(settings.lr_schedule, "cosine");
            assert_eq!(settings.loss_on, "completion");
            let torch = settings.torch.expect("torch settings");
            assert!(torch.nproc_per_node >= 1 && torch.activation_checkpointing);
        }
    }
    // Evaluation: GSM8K, AIME25, MATH-500 at temperature 0.6, top_p 0.95, 32,768 tokens, 8 samples.
    let benchmarks: Vec<_> =
        setting(&t, "evaluator", "benchmarks").as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(benchmarks, ["gsm8k", "aime25", "math500"]);
    assert_eq!(setting(&t, "evaluator", "temperature").as_float(), Some(0.6));
    assert_eq!(setting(&t, "evaluator", "top_p").as_float(), Some(0.95));
    assert_eq!(setting(&t, "evaluator", "max_tokens").as_integer(), Some(32_768));
    assert_eq!(setting(&t, "evaluator", "samples_per_problem").as_integer(), Some(8));
    // The expensive topic is kept forever; the question-keyed topics are co-partitioned.
    assert_eq!(t.topics["samples"].retention_ms, Some(-1));
    let partitions: Vec<i32> =
        ["questions", "samples", "judged", "agreed"].iter().map(|n| t.topics[*n].partitions).collect();
    assert!(partitions.windows(2).all(|w| w[0] == w[1]), "{partitions:?}");
}

#[test]
fn the_quickstart_topology_checks_and_ships_its_data() {
    let t = load("quickstart.toml");
    for file in setting(&t, "feeder", "files").as_array().unwrap() {
        let path = repo_root().join(file["uri"].as_str().unwrap());
        assert!(path.exists(), "{} is shipped", path.display());
    }
    for key in ["tokenizer", "tokenizer_config"] {
        let path = repo_root().join(setting(&t, "packer-reference", key).as_str().unwrap());
        assert!(path.exists(), "{} is shipped", path.display());
    }
}

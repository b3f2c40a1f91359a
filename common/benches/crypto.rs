//! Signing and verification throughput (signatures per second), transaction hashing, and the Merkle
//! root a coordinator builds for every finished job (n leaves, n - 1 parents).

use cpc_common::{
    SecretKey, Transaction, TxType, hashing::sha256, merkle::merkle_root, tx::MIN_GAS_PRICE,
};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

fn crypto(c: &mut Criterion) {
    let key =
        SecretKey::from_hex("4f3edf982522b4e51b7e8b5f2f9c4d1d7a9e5f8c2b6d4e1a3c5b7d9e0f1a2b3c")
            .expect("key");
    let digest = sha256(b"cpc-farm bench");
    let sig = key.sign_digest(&digest).expect("sign");
    let public = key.public_key();

    let mut g = c.benchmark_group("secp256k1");
    g.throughput(Throughput::Elements(1));
    g.bench_function("sign", |b| b.iter(|| key.sign_digest(black_box(&digest))));
    g.bench_function("verify", |b| {
        b.iter(|| public.verify_digest(black_box(&digest), black_box(&sig)))
    });
    g.finish();

    let payload = serde_json::json!({
        "task_id": "d953ea66-be46-8835-a022-1469f385c596",
        "worker_address": key.address().to_string(),
        "result_hash": "96edc64584cfd9e472f4df8add9b2a8415b030df930dfa2f9b4c4597affe8301",
        "proof": "", "nonce": 7, "signature": "",
    });
    let tx =
        Transaction::new_signed(TxType::SubmitResult, &key, None, 0, 0, MIN_GAS_PRICE, payload)
            .expect("tx");
    let mut g = c.benchmark_group("transaction");
    g.throughput(Throughput::Elements(1));
    g.bench_function("hash", |b| b.iter(|| black_box(&tx).hash()));
    g.bench_function("check_stateless", |b| b.iter(|| black_box(&tx).check_stateless()));
    g.finish();

    let mut g = c.benchmark_group("merkle_root");
    for n in [1024u32, 16384] {
        let leaves: Vec<_> = (0..n).map(|i| sha256(i.to_le_bytes())).collect();
        g.throughput(Throughput::Elements(u64::from(n)));
        g.bench_function(format!("{n}"), |b| b.iter(|| merkle_root(black_box(&leaves))));
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(3));
    targets = crypto
}
criterion_main!(benches);

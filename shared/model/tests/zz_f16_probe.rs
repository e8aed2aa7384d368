use aifab_model::{testing, DType, Device, Encoder, TextTokenizer};
#[test]
fn f16_probe() {
    let d = std::env::temp_dir().join("aifab-f16-probe");
    testing::write_tiny_bert(&d, 3).unwrap();
    let tok = TextTokenizer::from_file(d.join("tokenizer.json"), 32).unwrap();
    let a = tok.encode("hello world").unwrap().ids;
    let b = tok.encode("the quick brown fox jumps over the lazy dog").unwrap().ids;
    let e32 = Encoder::load_with_dtype(&d, &Device::Cpu, DType::F32).unwrap();
    let e16 = Encoder::load_with_dtype(&d, &Device::Cpu, DType::F16).unwrap();
    let r32 = e32.embed(&[&a, &b]).unwrap();
    let r16 = e16.embed(&[&a, &b]);
    eprintln!("f32 {:?}", &r32[0][..4]);
    match r16 { Ok(v) => eprintln!("f16 {:?} {:?}", &v[0][..4], &v[1][..4]), Err(e) => eprintln!("f16 err {e}") }
    let m = std::path::Path::new(&std::env::var("HOME").unwrap()).join(".cache/aifab/models/all-minilm-l6-v2");
    let tok = TextTokenizer::from_file(m.join("tokenizer.json"), 128).unwrap();
    let a = tok.encode("hello world").unwrap().ids;
    let b = tok.encode("the quick brown fox jumps over the lazy dog").unwrap().ids;
    let e16 = Encoder::load_with_dtype(&m, &Device::Cpu, DType::F16).unwrap();
    match e16.embed(&[&a, &b]) { Ok(v) => eprintln!("real f16 {:?} {:?}", &v[0][..4], &v[1][..4]), Err(e) => eprintln!("real f16 err {e}") }
}

mod common;
#[test]
#[ignore]
fn probe() {
    let d = std::path::Path::new("/tmp/vmprobe");
    for (name, init) in [
        ("ready", xtask::fixture::Init::Ready),
        ("panic", xtask::fixture::Init::Panic),
        ("silent", xtask::fixture::Init::Silent),
    ] {
        let mut f = xtask::fixture::Fixture::new(name);
        f.init = init;
        let tree = d.join(format!("tree-{name}"));
        f.write(&tree).unwrap();
        let out = d.join(name);
        std::fs::create_dir_all(&out).unwrap();
        std::fs::copy(
            xtask::fixture::HostKernel::find().unwrap().vmlinuz,
            out.join("vmlinuz"),
        )
        .unwrap();
        let s = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "cd {} && find . | cpio --quiet -o -H newc > {}/initramfs",
                tree.display(),
                out.display()
            ))
            .status()
            .unwrap();
        assert!(s.success());
        std::fs::write(out.join("cmdline"), "panic=-1\n").unwrap();
    }
}

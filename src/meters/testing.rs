//! A fake sysfs tree under the temp directory, removed when dropped.

use std::path::PathBuf;

pub struct FakeSys {
    pub root: PathBuf,
}

impl FakeSys {
    pub fn new(name: &str) -> Self {
        let root = std::env::temp_dir().join(format!("ck-sys-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        Self { root }
    }

    pub fn write(&self, path: &str, text: &str) {
        let path = self.root.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    /// Makes a file unreadable for anyone, root included: a directory in its place.
    pub fn replace_with_dir(&self, path: &str) {
        let path = self.root.join(path);
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
    }
}

impl Drop for FakeSys {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

pub mod lab {
    pub struct LabSpec;
    impl Default for LabSpec {
        fn default() -> Self {
            LabSpec
        }
    }
    pub struct Lab;
    impl Lab {
        pub fn up(_: &LabSpec) -> anyhow::Result<Lab> {
            anyhow::bail!("todo")
        }
        pub fn describe(&self) -> String {
            String::new()
        }
        pub fn id(&self) -> &str {
            ""
        }
        pub fn keep(self) {}
    }
    pub fn down(_: Option<&str>) -> anyhow::Result<Vec<String>> {
        Ok(vec![])
    }
    pub fn status() -> anyhow::Result<String> {
        Ok(String::new())
    }
}

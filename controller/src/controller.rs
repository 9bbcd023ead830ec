#[derive(clap::Args, Debug)]
pub struct ControllerArgs {}
pub fn run(_a: ControllerArgs) -> anyhow::Result<()> {
    anyhow::bail!("todo")
}

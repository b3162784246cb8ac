use clap::{Parser, Subcommand};
use kube::CustomResourceExt;
use xks_operator::api::ExternalKeyStore;

/// Manage AWS KMS external key stores (XKS) declaratively.
#[derive(Parser)]
#[command(name = "xks-operator", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the ExternalKeyStore CustomResourceDefinition as YAML.
    Crd,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => {
            print!("{}", serde_yaml::to_string(&ExternalKeyStore::crd())?);
        }
    }
    Ok(())
}

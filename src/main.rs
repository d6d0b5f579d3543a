//! The `imd` binary: everything is in the library; the command line is `cli`.

fn main() {
    std::process::exit(imd::cli::run());
}

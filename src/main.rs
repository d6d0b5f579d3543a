fn main() {
    std::process::exit(imd::cli::run());
}

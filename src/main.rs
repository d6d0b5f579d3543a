/// mimalloc: the message path allocates many small, short-lived buffers across threads.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    std::process::exit(imd::cli::run());
}

fn main() {
    std::process::exit(csm_parity::cli::main());
}

//! `isthmus-image` builds the bootable GPT disk image (UEFI, A/B slots, ext4 data partition).

fn main() {
    eprintln!("isthmus-image: the image builder is not built yet");
    std::process::exit(1);
}

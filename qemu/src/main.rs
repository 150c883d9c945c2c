//! `isthmus-lab` boots two Isthmus appliances in QEMU joined by a simulated Internet link and
//! shows a tunnel carrying traffic between the hosts behind them.

fn main() {
    eprintln!("isthmus-lab: the lab is not built yet (see issue: bootable image and QEMU lab)");
    std::process::exit(1);
}

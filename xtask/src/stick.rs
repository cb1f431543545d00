//! The stick's boot partition as an interface: FAT at an offset in a file or device, a directory, or ssh.

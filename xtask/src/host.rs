//! Host tools each command needs, and the package that provides each per distro.

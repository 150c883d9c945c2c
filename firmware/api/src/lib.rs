//! Request and response types of the management API, shared by `isthmusd` and the `isthmus` CLI.
//! No transport lives here.
#![forbid(unsafe_code)]

//! Tensor parallelism: the decoder's weights split over ranks that combine their partial results
//! through a [`Communicator`].

pub mod communicator;

pub use communicator::Communicator;

//! PTX modules loaded into a CUDA context once and reused: loading JIT-compiles the PTX for the
//! GPU, which costs milliseconds, while a launch costs microseconds.

use std::sync::{Arc, Mutex};

use cudarc::driver::{CudaContext, CudaFunction, CudaModule, DriverError};
use cudarc::nvrtc::Ptx;

/// The modules loaded so far: (context, module name, module). Holding the context keeps it alive,
/// so an entry can never be mistaken for a later context at the same address.
static LOADED: Mutex<Vec<(Arc<CudaContext>, &'static str, Arc<CudaModule>)>> =
    Mutex::new(Vec::new());

/// `function` of the module `name` (PTX source `ptx`) in `context`, loading the module on first use.
pub(crate) fn function(
    context: &Arc<CudaContext>,
    name: &'static str,
    ptx: &'static str,
    function: &str,
) -> Result<CudaFunction, DriverError> {
    let mut loaded = LOADED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let module = match loaded
        .iter()
        .find(|(ctx, module_name, _)| Arc::ptr_eq(ctx, context) && *module_name == name)
    {
        Some((_, _, module)) => module.clone(),
        None => {
            let module = context.load_module(Ptx::from_src(ptx))?;
            loaded.push((context.clone(), name, module.clone()));
            module
        }
    };
    module.load_function(function)
}

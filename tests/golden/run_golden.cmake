# One golden test: probe the scenario, then compare with the golden (see golden.cmake).
get_filename_component(out_dir ${OUT} DIRECTORY)
file(MAKE_DIRECTORY ${out_dir})
execute_process(COMMAND ${PROBE} --scenario ${SCENARIO} --out ${OUT} ${PROBE_ARGS}
                RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "mplus-probe failed (${rc}) on ${SCENARIO}")
endif()
execute_process(COMMAND ${COMPARE} ${OUT} ${GOLDEN} ${TOLERANCE} RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "${OUT} does not match ${GOLDEN} within ${TOLERANCE}")
endif()
